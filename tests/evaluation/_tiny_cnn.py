"""The tiny CNN the baseline tests explain, and the settings that keep slow baselines fast on it."""

from __future__ import annotations

import torch
from torch import nn


class TinyCNN(nn.Module):
    """Conv-ReLU-Conv-ReLU-pool-linear; flatten is functional so Captum's LRP supports every leaf."""

    def __init__(self, num_classes: int = 3, region: tuple[slice, slice] | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)
        self.region = region  # if set, only this window of the conv2 map reaches the head
        self.boom: type[Exception] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        if self.boom is not None:
            raise self.boom("boom")
        if self.region is not None:
            mask = torch.zeros_like(f[:1, :1])
            mask[..., self.region[0], self.region[1]] = 1.0
            f = f * mask
        return self.fc(self.pool(f).flatten(1))


def baseline_kwargs(name: str) -> dict:
    """Settings that keep the slow baselines fast on the tiny model."""
    return {"integrated_gradients": {"n_steps": 8}, "scorecam": {"batch_size": 16}}.get(name, {})
