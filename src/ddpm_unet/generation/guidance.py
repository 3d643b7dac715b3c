"""Class labels and classifier-free guidance (Ho & Salimans 2022) for sampling.

`GuidedModel` is the `model(x, t)` every sampler calls (samplers know nothing of labels). It
combines, on the raw network output, `uncond + w * (cond - uncond)` (w = `guidance_scale`), with
`cond = net(x, t, y)` and `uncond = net(x, t, no-class token)` in ONE call of `2N` images; `w == 1`
and `w == 0` make one plain call of `N` (the result is exactly `cond` or `uncond`).

The combination is affine with weights summing to one, and eps, x0 and v are affine in each other
with coefficients of `(x_t, t)` only, so guiding eps and converting equals guiding x0 or v
directly: one `w`, one sampler path, whatever the network predicts (tests/test_guidance.py). In eps
terms it is the paper's `eps~ = (1 + s) eps(c) - s eps(none)` with `s = w - 1`.

It also counts the calls (`ModelCalls`) and stops sampling on a signal (`raise_if_interrupted`,
once per call, so within one denoising step).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ddpm_unet.utils.errors import UserError
from ddpm_unet.utils.interrupts import raise_if_interrupted


def guide(cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """`uncond + w * (cond - uncond)` on outputs `[N, C, H, W]` (as diffusers' pipelines)."""
    return uncond + guidance_scale * (cond - uncond)


def runs_both_halves(labels: object, guidance_scale: float | None) -> bool:
    """Whether `GuidedModel` runs the network on 2N images per call (guidance not 0 or 1)."""
    return labels is not None and guidance_scale not in (None, 0.0, 1.0)


@dataclass
class ModelCalls:
    """Calls of the model by samplers, summed over batches: `nfe` is calls per image."""

    images: int = 0
    image_calls: int = 0  # sum over calls of the images in the call

    @property
    def nfe(self) -> float | None:
        if not self.images:
            return None
        per_image = self.image_calls / self.images
        return int(per_image) if per_image == int(per_image) else per_image


class GuidedModel(nn.Module):
    """`model(x [N, C, H, W], t [N]) -> [N, C, H, W]`: `net` with `labels` and guidance.

    Args:
        net: `forward(x, t)` (unconditional) or `forward(x, t, y)`, with `num_classes` the
            no-class token (e.g. `FixedBatch` around a class-conditional `UNet`).
        labels: `[N]` int64 class of each image of the batch, or None: `net(x, t)` unchanged.
        guidance_scale: w (>= 0); None means 1 (plain conditional).
        num_classes: the no-class token's index (needed with labels).
        calls: where the calls are counted.
    """

    def __init__(
        self,
        net: nn.Module,
        labels: torch.Tensor | None = None,
        guidance_scale: float | None = None,
        num_classes: int | None = None,
        calls: ModelCalls | None = None,
    ) -> None:
        super().__init__()
        if labels is not None and num_classes is None:
            raise ValueError("labels need num_classes (the index of the no-class token)")
        self.net = net
        self.labels = labels
        self.guidance_scale = 1.0 if guidance_scale is None else float(guidance_scale)
        self.num_classes = num_classes
        self.calls = calls if calls is not None else ModelCalls()
        self.train(net.training)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise_if_interrupted()  # samplers call once or twice per step: stop within one
        self.calls.image_calls += x.shape[0]
        if self.labels is None:
            return self.net(x, t)
        y = self.labels.to(x.device)
        w = self.guidance_scale
        if w == 1.0:
            return self.net(x, t, y)
        no_class = torch.full_like(y, self.num_classes)
        if w == 0.0:
            return self.net(x, t, no_class)
        both = self.net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, no_class]))
        cond, uncond = both.chunk(2)
        return guide(cond, uncond, w)


def check_guidance_scale(guidance_scale: Any, num_classes: int | None) -> float | None:
    """The guidance scale to sample with (checked): None for an unconditional model, 1.0 unset."""
    if num_classes is None:
        if guidance_scale is not None:
            raise UserError(
                f"guidance_scale={guidance_scale} needs a class-conditional model, but this "
                "checkpoint's model is unconditional (trained without classes): leave "
                "guidance_scale unset."
            )
        return None
    if guidance_scale is None:
        return 1.0
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, int | float):
        raise UserError(f"guidance_scale={guidance_scale!r} is not a number: e.g. 2.0.")
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise UserError(
            f"guidance_scale={guidance_scale} must be a number >= 0: 0 samples unconditionally, "
            "1 plainly conditionally, more than 1 follows the class more strongly (e.g. 2)."
        )
    return float(guidance_scale)


def resolve_labels(
    labels: Any,
    num_samples: int,
    num_classes: int | None,
    class_names: Sequence[str] | None = None,
) -> np.ndarray | None:
    """The class of each image, int64 `[num_samples]`, or None for an unconditional model.

    `labels`: None or `balanced` (image i gets class `i % num_classes`), or a class id, a class
    name (when the model has `class_names`), or a list of them, cycled over the images. Raises
    `UserError` for labels of an unconditional model, an id out of range, an unknown name.
    """
    if num_classes is None:
        if labels is not None:
            raise UserError(
                f"labels={labels} needs a class-conditional model, but this checkpoint's model "
                "is unconditional (trained without classes): leave labels unset."
            )
        return None
    if labels is None or labels == "balanced":
        return np.arange(num_samples, dtype=np.int64) % num_classes
    values = [labels] if isinstance(labels, str | int) else list(labels)
    if not values:
        raise UserError("labels=[] names no class: use labels=balanced or e.g. labels=[0,3].")
    ids = [_class_id(value, num_classes, list(class_names or [])) for value in values]
    return np.resize(np.asarray(ids, dtype=np.int64), num_samples)


def _class_id(value: Any, num_classes: int, names: list[str]) -> int:
    if isinstance(value, str) and value in names:
        return names.index(value)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise UserError(f"labels: {value!r} is not a class id or name.")
    try:
        index = int(value)
    except ValueError:
        known = f"one of {names}" if names else "an id (this model has no class names)"
        raise UserError(f"labels: class {value!r} is unknown: use {known}.") from None
    if not 0 <= index < num_classes:
        raise UserError(
            f"labels: class id {index} is out of range: this model has {num_classes} classes, "
            f"ids 0 to {num_classes - 1}."
        )
    return index


def order_by_class(labels: np.ndarray | None, count: int) -> np.ndarray:
    """Indices of `count` images sorted by class (stable: index order within a class)."""
    if labels is None:
        return np.arange(count)
    return np.argsort(labels, kind="stable")
