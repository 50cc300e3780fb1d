"""pytorch-grad-cam's methods as baselines: Grad-CAM++, Score-CAM and FullGrad.

Maps are min-max scaled to ``[0, 1]`` per image (the library's own output); the library's hooks are
released after every call and the model's train/eval mode kept. Needs ``grad-cam``
(``pip install 'salfcbm[baselines]'``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from salfcbm._utils.modes import preserved_modes
from salfcbm.errors import MissingExtraError, UnsupportedBaselineError
from salfcbm.evaluation.baselines.base import Attributor, BatchSized, LayerMixin
from salfcbm.evaluation.baselines.registry import register_baseline


def _grad_cam(feature: str) -> Any:
    try:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:  # pragma: no cover - installed in the dev environment
        raise MissingExtraError("grad-cam", "baselines", feature) from None
    return pytorch_grad_cam, ClassifierOutputTarget


class _PGCAM(LayerMixin, Attributor):
    """A pytorch-grad-cam method, used inside a try/finally that releases its hooks."""

    cam_class: ClassVar[str] = ""

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module | None = None,
        *,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        eval_mode: bool = True,
    ) -> None:
        Attributor.__init__(self, model, eval_mode=eval_mode)
        _grad_cam(self.name)
        self._init_layer(layer, reshape_transform)

    def _extra(self, cam: Any) -> None:
        pass

    def _target_layers(self) -> list[nn.Module]:
        return [self.layer]

    def _run(self, images: torch.Tensor, target: torch.Tensor, reshape: Any) -> torch.Tensor:
        pgc, ClassifierOutputTarget = _grad_cam(self.name)
        cam = None
        try:
            cam_class = getattr(pgc, self.cam_class)
            with preserved_modes(self.model):  # BaseCAM calls model.eval(); keep the mode chosen by `eval_mode`
                cam = cam_class(model=self.model, target_layers=self._target_layers(), reshape_transform=reshape)
            self._extra(cam)
            out = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in target.tolist()])
        finally:
            if cam is not None:
                cam.activations_and_grads.release()
        return torch.from_numpy(out).to(images.device)[:, None]

    def _attribute(self, images: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        hw = (int(images.shape[-2]), int(images.shape[-1]))
        reshape = None if self._layout(hw) == "NCHW" else self._fold
        return self._run(images, target, reshape)


@register_baseline
class _GradCAMPlusPlus(_PGCAM):
    name = "gradcam++"
    label = "GradCAM++"
    uses_layer = True
    cam_class = "GradCAMPlusPlus"


@register_baseline
class _ScoreCAM(BatchSized, _PGCAM):
    name = "scorecam"
    label = "ScoreCAM"
    uses_layer = True
    cam_class = "ScoreCAM"

    def _extra(self, cam: Any) -> None:
        cam.batch_size = self.batch_size


@register_baseline
class _FullGrad(_PGCAM):
    name = "fullgrad"
    label = "FullGrad"
    cam_class = "FullGrad"

    def __init__(self, model: nn.Module, *, eval_mode: bool = True) -> None:
        Attributor.__init__(self, model, eval_mode=eval_mode)
        _grad_cam(self.name)
        has_bias = any(
            type(m) in (nn.Conv2d, nn.BatchNorm2d) and getattr(m, "bias", None) is not None for m in model.modules()
        )
        if not has_bias:
            raise UnsupportedBaselineError(
                f"FullGrad (pytorch-grad-cam) sums bias-gradients of Conv2d and BatchNorm2d layers, and "
                f"{type(model).__name__} has no such layer with a bias (a transformer?), so it would reduce to "
                "|input x gradient|. Use another baseline for this model."
            )
        bad_bn = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and m.running_mean is None]
        if bad_bn:
            raise UnsupportedBaselineError(
                f"FullGrad needs BatchNorm2d running statistics, but {', '.join(repr(n) for n in bad_bn[:5])} "
                "were built with track_running_stats=False. Use another baseline for this model."
            )

    def _target_layers(self) -> list[nn.Module]:
        return []  # FullGrad finds every bias layer itself

    def _attribute(self, images: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        return self._run(images, target, None)

