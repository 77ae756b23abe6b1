"""torch.distributed set-up from torchrun's environment; the same code runs as a single process."""
import dataclasses
import os
from typing import Any, List

import torch
import torch.distributed as dist

__all__ = ['DistInfo', 'init_distributed', 'shutdown', 'all_reduce_sum', 'all_gather_objects',
           'broadcast_object', 'any_true']


@dataclasses.dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device('cpu')

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _pick_device(choice: str, local_rank: int) -> torch.device:
    if choice == 'cpu':
        return torch.device('cpu')
    if choice == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but torch.cuda.is_available() is False")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device('cuda', local_rank)
    return torch.device('cpu')


def init_distributed(device: str = 'auto') -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT).

    Without those variables this is one process and no process group. The backend is NCCL on CUDA
    and gloo on the CPU.
    """
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    dev = _pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend='nccl' if dev.type == 'cuda' else 'gloo')
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes in place (no-op on one process)."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_true(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on any process: every process then takes the same branch."""
    if not _active():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_gather_objects(obj: Any) -> List[Any]:
    if not _active():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if _active():
        dist.barrier()
