"""The differentiated part of a training step (forward, loss, backward), run eagerly or replayed from a CUDA graph.

A small image trains in a few hundred short kernel launches per step, so the host's time to issue them,
not the GPU, sets the pace. With ``train.cuda_graph`` the forward, the loss and the backward are recorded
once into a CUDA graph and every later step is one replay. What stays eager after the replay (the
optimiser step, gradient clipping, the non-finite check, EMA) is unchanged, so the lr schedule, the
``nan_policy`` and checkpoints behave as in eager training.

The recorded graph reads its inputs from fixed tensors and writes the gradients into memory it owns:
the batch is copied into those tensors before each replay, and the gradients are never set to ``None``
afterwards (the next replay overwrites them in place).
"""
from typing import Callable, Optional

import torch

from .evaluate import autocast

__all__ = ['ForwardBackward']

# Steps run on a side stream before recording: they compile and autotune the Triton kernels, let cuDNN
# pick its algorithms and allocate autograd's buffers, none of which may happen inside a recording.
WARMUP_STEPS = 3


class ForwardBackward:
    """``loss = criterion(model(images), targets); scaler.scale(loss).backward()``; returns the detached loss.

    ``cuda_graph``: record the step on the first call and replay it afterwards. A batch of another shape
    (an unreadable image was dropped from it) runs eagerly into the same gradient tensors.
    """

    def __init__(self, model: torch.nn.Module, criterion: Callable, device: torch.device, amp: str,
                 scaler: torch.amp.GradScaler, cuda_graph: bool = False):
        self.model, self.criterion, self.device, self.amp, self.scaler = model, criterion, device, amp, scaler
        self.cuda_graph = cuda_graph
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.static = None  # (images, targets, loss) the graph reads and writes

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not self.cuda_graph:
            return self._eager(images, targets, set_to_none=True)
        if self.graph is None:
            self._record(images, targets)
        static_images, static_targets, static_loss = self.static
        if images.shape != static_images.shape or targets.shape != static_targets.shape:
            return self._eager(images, targets, set_to_none=False)
        static_images.copy_(images)
        static_targets.copy_(targets)
        self.graph.replay()
        return static_loss

    def _loss_and_backward(self, images, targets, cache: bool = True) -> torch.Tensor:
        with autocast(self.device, self.amp, cache=cache):
            logits = self.model(images)
        loss = self.criterion(logits.float(), targets)  # the softmax in fp32 under bf16 autocast
        self.scaler.scale(loss).backward()
        return loss.detach()

    def _eager(self, images, targets, set_to_none: bool) -> torch.Tensor:
        for p in self.model.parameters():
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()
        return self._loss_and_backward(images, targets)

    def _record(self, images, targets) -> None:
        static_images, static_targets = images.clone(), targets.clone()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._eager(static_images, static_targets, set_to_none=True)
        torch.cuda.current_stream(self.device).wait_stream(side)
        for p in self.model.parameters():
            p.grad = None  # so that the recorded backward allocates the gradients in the graph's memory
        self.graph = torch.cuda.CUDAGraph()
        # autocast's cache of cast weights would hold tensors from the recording, stale after an update
        with torch.cuda.graph(self.graph):
            static_loss = self._loss_and_backward(static_images, static_targets, cache=False)
        self.static = (static_images, static_targets, static_loss)
