"""`SmallConvNet`: the demo's stand-in for a pretrained backbone, registered with timm.

The network is registered as the timm model ``salfcbm_demo_convnet`` (`timm.models.register_model`)
when this module is imported (``import salfcbm.demo`` does), so a demo model is saved with a timm
spec like any other backbone and ``SALFCBM.from_pretrained(folder)`` rebuilds it in a fresh process:
salfcbm imports this module before timm builds a name starting with ``salfcbm_demo_``
(`salfcbm.core.backbones.TIMM_NAME_MODULES`). There are no published weights: a saved model carries
its backbone's weights in ``backbone.safetensors``.

Examples:
    >>> import timm
    >>> net = timm.create_model("salfcbm_demo_convnet", num_classes=3, stem_width=4)
    >>> type(net).__name__, net.spec["kwargs"]
    ('SmallConvNet', {'num_classes': 3, 'stem_width': 4})
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import register_model
from torch import nn

from salfcbm.errors import BackboneSpecError, InputError

__all__ = ["SmallConvNet", "TIMM_NAME", "salfcbm_demo_convnet"]

#: The timm name of `SmallConvNet` (``timm.create_model(TIMM_NAME, num_classes=8, stem_width=16)``).
TIMM_NAME = "salfcbm_demo_convnet"


class _Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) / 0.25


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallConvNet(nn.Module):
    """A small CNN for `salfcbm.demo.SyntheticScenes`, standing in for a pretrained backbone (paper 3.3).

    Takes images in ``[0, 1]`` directly (normalisation is the first module). A stride-2
    stem, then four stages named ``stages.0`` to ``stages.3`` (3x3 conv, BatchNorm, ReLU);
    ``stages.1`` and ``stages.2`` halve the resolution, so a 64 px input gives a 32x32 map
    after the stem and an ``8 x 8`` map at ``stages.3`` (the last spatial stage and
    salfcbm's default layer), with ``4 * width`` channels. Then global average pooling
    and a linear head ``fc``. About 0.11 M parameters and 24 MFLOPs per 64 px image at
    ``width=16``.

    Args:
        num_classes: Output classes.
        width: Channels of the stem; stages have ``width, 2 * width, 4 * width, 4 * width``.

    Examples:
        >>> net = SmallConvNet(num_classes=8, width=8)
        >>> net(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 8])
        >>> stem = net.stem(torch.rand(1, 3, 64, 64))
        >>> net.stages(stem).shape
        torch.Size([1, 32, 8, 8])
    """

    def __init__(self, num_classes: int = 8, width: int = 16) -> None:
        super().__init__()
        for name, v in (("num_classes", num_classes), ("width", width)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InputError(f"{name} must be a positive int; got {v!r}.")
        self.num_classes = num_classes
        self.width = width
        # the contract salfcbm (and timm) read: inputs are [0, 1] images, normalised inside the model
        self.pretrained_cfg = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
        w = width
        self.stem = nn.Sequential(_Normalize(), *_conv_bn(3, w, 2))
        self.stages = nn.Sequential(
            nn.Sequential(*_conv_bn(w, w)),
            nn.Sequential(*_conv_bn(w, 2 * w, 2), *_conv_bn(2 * w, 2 * w)),
            nn.Sequential(*_conv_bn(2 * w, 4 * w, 2), *_conv_bn(4 * w, 4 * w)),
            nn.Sequential(*_conv_bn(4 * w, 4 * w)),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last spatial map ``(B, 4 * width, H / 8, W / 8)``."""
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.forward_features(x)).flatten(1))

    @property
    def spec(self) -> dict[str, Any]:
        """The backbone spec that rebuilds this architecture through timm (`TIMM_NAME`).

        Pass it to `salfcbm.wrap` (``backbone_spec=net.spec``): the saved model then loads with
        ``SALFCBM.from_pretrained(folder)`` alone, its weights read from ``backbone.safetensors``.
        """
        return {"source": "timm", "name": TIMM_NAME, "weights": None,
                "kwargs": {"num_classes": self.num_classes, "stem_width": self.width}}


@register_model
def salfcbm_demo_convnet(pretrained: bool = False, num_classes: int = 8, stem_width: int = 16,
                         **kwargs: Any) -> SmallConvNet:
    """timm's entry point for `SmallConvNet` (``width = stem_width``); it has no pretrained weights.

    Raises:
        BackboneSpecError: ``pretrained=True`` (a demo backbone is trained by ``salfcbm demo``; its
            weights travel as ``backbone.safetensors`` with the saved model).
        InputError: a constructor argument `SmallConvNet` does not take.
    """
    if pretrained:
        raise BackboneSpecError(
            f"{TIMM_NAME} has no published weights: the demo trains its backbone. Build it with pretrained=False "
            "and load the run's backbone.safetensors, or load the saved model with SALFCBM.from_pretrained(folder)."
        )
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # what timm.create_model passes along
        kwargs.pop(key, None)
    if kwargs:
        raise InputError(f"{TIMM_NAME} takes num_classes and stem_width; got also {sorted(kwargs)}.")
    return SmallConvNet(num_classes=num_classes, width=stem_width)
