"""The two floors a heatmap method must beat: seeded uniform noise (``random``) and a centred Gaussian
(``center``, the centre-bias floor). Neither looks at the model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from salfcbm.errors import InputError
from salfcbm.evaluation.baselines.base import Attributor
from salfcbm.evaluation.inputs import check_images
from salfcbm.evaluation.baselines.registry import register_baseline


@register_baseline
class _Random(Attributor):
    name = "random"
    label = "random"
    needs_model = False

    def __init__(self, model: nn.Module | None = None, *, seed: int = 0) -> None:
        super().__init__(model, eval_mode=False)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputError(f"`seed` must be an int, got {seed!r}.")
        self.seed = seed
        self._gen = torch.Generator().manual_seed(seed)

    def attribute(self, images: torch.Tensor, target: Any = None) -> torch.Tensor:
        images = check_images(images)
        B, _, H, W = images.shape
        return torch.rand(B, 1, H, W, generator=self._gen).to(images.device)

    __call__ = attribute


@register_baseline
class _Center(Attributor):
    name = "center"
    label = "center"
    needs_model = False

    def __init__(self, model: nn.Module | None = None, *, sigma: float = 0.25) -> None:
        super().__init__(model, eval_mode=False)
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
            raise InputError(f"`sigma` must be a positive fraction of the image side, got {sigma!r}.")
        self.sigma = float(sigma)

    def attribute(self, images: torch.Tensor, target: Any = None) -> torch.Tensor:
        images = check_images(images)
        B, _, H, W = images.shape
        y = (torch.arange(H, dtype=torch.float32, device=images.device) + 0.5 - H / 2) / (self.sigma * H)
        x = (torch.arange(W, dtype=torch.float32, device=images.device) + 0.5 - W / 2) / (self.sigma * W)
        g = torch.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))
        return g.expand(B, 1, H, W).clone()

    __call__ = attribute
