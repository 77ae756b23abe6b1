"""Timing of detector training steps (forward, backward, optimiser step) on generated images."""
import platform
import statistics
import time
from typing import Any, Dict, Optional, Tuple

import timm
import torch
import torchvision

from ..engine.evaluate import AMP_DTYPES, autocast
from .detectors import fasterrcnn_vim
from .shapes import ShapesDataset, collate_detection

__all__ = ['benchmark_training_steps']



def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def benchmark_training_steps(
        model_name: str = 'vim_small_patch16_224',
        batch_size: int = 8,
        image_size: Tuple[int, int] = (800, 1216),
        steps: int = 20,
        warmup: int = 5,
        amp: str = 'bf16',
        device: str = 'cuda',
        grad_checkpointing: bool = False,
        backbone_kwargs: Optional[Dict[str, Any]] = None,
        objects: Tuple[int, int] = (2, 8),
        object_size: Optional[Tuple[int, int]] = None,
) -> Dict[str, Any]:
    """Time ``steps`` Faster R-CNN training steps (after ``warmup`` untimed ones) on one fixed batch
    of generated images of ``image_size`` (H, W), which the detector's transform keeps at that size.

    ``amp``: ``'none'``, ``'bf16'`` or ``'fp16'`` autocast (fp16 with a gradient scaler).
    Returns the settings, versions, per-step times (s), median step time, images per second and,
    on CUDA, the peak allocated memory in GiB.
    """
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {', '.join(AMP_DTYPES)}; got {amp!r}.")
    if steps < 1 or warmup < 0:
        raise ValueError(f"Need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}.")
    dev = torch.device(device)
    height, width = image_size
    object_size = object_size or (max(8, min(image_size) // 16), min(image_size) // 3)
    data = ShapesDataset(batch_size, image_size, objects=objects, object_size=object_size, seed=0)
    images, targets = collate_detection([data[i] for i in range(batch_size)])
    images = [im.to(dev) for im in images]
    targets = [{k: v.to(dev) for k, v in t.items()} for t in targets]

    kwargs = dict(backbone_kwargs or {}, grad_checkpointing=grad_checkpointing)
    model = fasterrcnn_vim(data.num_classes, model_name, backbone_kwargs=kwargs,
                           min_size=min(image_size), max_size=max(image_size)).to(dev).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp == 'fp16')

    def step() -> float:
        with autocast(dev, amp):
            loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return float(loss.detach())

    for _ in range(warmup):
        step()
    _sync(dev)
    if dev.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(dev)
    times, losses = [], []
    for _ in range(steps):
        start = time.perf_counter()
        losses.append(step())  # float() waits for the step to finish
        _sync(dev)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    result = dict(
        model=model_name, batch_size=batch_size, image_size=[height, width], amp=amp,
        grad_checkpointing=grad_checkpointing, steps=steps, warmup=warmup, backbone_kwargs=backbone_kwargs or {},
        device=torch.cuda.get_device_name(dev) if dev.type == 'cuda' else platform.processor() or 'cpu',
        torch=torch.__version__, torchvision=torchvision.__version__, timm=timm.__version__,
        step_times_s=times, median_step_s=median, mean_step_s=sum(times) / len(times),
        images_per_s=batch_size / median, final_loss=losses[-1],
    )
    if dev.type == 'cuda':
        result['peak_memory_gib'] = torch.cuda.max_memory_allocated(dev) / 2 ** 30
    return result
