"""BatchNorm recalibration after pruning: re-estimate every BatchNorm's running statistics on training images.

Removing channels changes what the layers after them see: a conv that lost input channels sums fewer terms, so
its outputs' mean and variance move away from the running statistics its BatchNorm collected on the unpruned
model. In eval mode BatchNorm normalizes with those stale statistics, and the error compounds layer by layer: a
model pruned to 2x can score near zero mAP before finetuning although its weights are fine. Forwarding a few
hundred training images with only the BatchNorm layers in train mode (no gradients, no weight changes) puts the
statistics back where the pruned model's activations are, so finetuning starts from a working detector.
NVIDIA ModelOpt's FastNAS does the same after choosing a subnet (docs/benchmarks.md, section 3d).

Only running statistics change (``running_mean``, ``running_var``, ``num_batches_tracked``); weights, biases and
every other module's state stay as they were. Layers that keep no running statistics (``track_running_stats=False``,
frozen BatchNorm copies such as transformers' ``RTDetrFrozenBatchNorm2d``) are left alone.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from rtdetr_prune.progress import progress


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, forward: Callable[[torch.Tensor], object],
                          batches: Callable[[], Iterator[dict]] | Iterable[torch.Tensor], images: int,
                          device: str | torch.device = "cpu") -> int:
    """Reset and re-estimate the running statistics of every BatchNorm in ``model``, in place.

    Args:
        model: the pruned model (its BatchNorms are recalibrated; everything else is untouched).
        forward: runs the part of ``model`` that holds its BatchNorms on images (B, 3, H, W) in [0, 1]
            (e.g. the family adapter's traced region); its outputs are discarded.
        batches: a function returning an iterator of training batches (dicts with ``img`` (B, 3, H, W), as
            :func:`rtdetr_prune.data.yolo.data_batches` gives them), or an iterable of image tensors.
        images: how many images to forward (at least one batch); the statistics are the plain average over
            them (momentum None), not a running blend that would favour the last batches.
        device: where to run; the model is moved there and back.

    Returns:
        The number of images forwarded (0 when the model has no BatchNorm with running statistics). BatchNorms
        that ``forward`` does not reach keep their statistics; on an error or interrupt every BatchNorm does.
    """
    layers = batchnorms(model)
    if not layers or images <= 0:
        return 0
    saved = {bn: (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()) for bn in layers}
    try:
        with _collecting(model, layers, device) as reached:
            seen = _forward_images(forward, batches() if callable(batches) else batches, images, device)
        for bn in set(layers) - reached:  # outside what ``forward`` runs: keep the statistics it had
            _restore(bn, saved[bn])
    except BaseException:  # interrupted or failed: the statistics the model came with, not half-collected ones
        for bn, stats in saved.items():
            _restore(bn, stats)
        raise
    return seen


@contextlib.contextmanager
def _collecting(model: nn.Module, layers: list[nn.modules.batchnorm._BatchNorm],
                device: str | torch.device) -> Iterator[set[nn.Module]]:
    """``model`` on ``device`` in eval mode but for ``layers``, reset to collect a plain average (momentum None);
    yields the set of layers a forward reaches. Modes, momenta and the model's device are put back on exit."""
    modes = {m: m.training for m in model.modules()}
    momenta = {bn: bn.momentum for bn in layers}
    home = next(model.parameters()).device
    reached: set[nn.Module] = set()
    hooks = [bn.register_forward_pre_hook(lambda m, _: reached.add(m)) for bn in layers]
    try:
        model.eval().to(device)
        for bn in layers:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over every batch forwarded
            bn.train()
        yield reached
    finally:
        for h in hooks:
            h.remove()
        for bn, momentum in momenta.items():
            bn.momentum = momentum
        for m, training in modes.items():
            m.train(training)
        model.to(home)


def _forward_images(forward: Callable[[torch.Tensor], object], source: Iterable, images: int,
                    device: str | torch.device) -> int:
    """Run ``forward`` on the first ``images`` images of ``source`` (batch dicts or image tensors); return how many."""
    seen = 0
    with progress(desc="BatchNorm recalibration", total=images, leave=False) as bar:
        for b in source:
            x = b["img"] if isinstance(b, dict) else b
            x = x[: images - seen].to(device).float()
            forward(x)
            seen += len(x)
            bar.update(len(x))
            if seen >= images:
                break
    if seen == 0:
        raise ValueError("BatchNorm recalibration got no images: the training split yielded no batches.")
    return seen


def _restore(bn: nn.modules.batchnorm._BatchNorm, stats: tuple[torch.Tensor, ...]) -> None:
    for buffer, value in zip((bn.running_mean, bn.running_var, bn.num_batches_tracked), stats):
        buffer.copy_(value)
