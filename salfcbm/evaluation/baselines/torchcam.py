"""torchcam's CAM extractors (CAM, Grad-CAM, Grad-CAM++, Smooth Grad-CAM++, XGrad-CAM, Layer-CAM, Score-CAM)
and LeGrad (vision transformers) as optional baselines (``list_baselines(optional=True)``).

Needs ``torchcam`` (in the ``baselines`` extra); without it, building one raises `MissingExtraError`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from salfcbm._utils.modes import preserved_modes
from salfcbm.errors import InputError, MissingExtraError, UnsupportedBaselineError
from salfcbm.evaluation.baselines.base import Attributor, BatchSized, LayerMixin, resolve_layer
from salfcbm.evaluation.baselines.registry import register_baseline
from salfcbm.evaluation.inputs import model_logits


def _torchcam(feature: str) -> Any:
    try:
        import torchcam.methods as methods
    except ImportError:
        raise MissingExtraError("torchcam", "baselines", feature) from None
    return methods


class _TorchCAM(LayerMixin, Attributor):
    """A torchcam (``torchcam.methods``) CAM extractor at one layer, hooks removed after every call.

    Maps are torchcam's: ReLU'd (except CAM) and min-max normalised per image, at the layer's grid,
    upsampled bilinearly to the input.
    """

    uses_layer = True
    optional = True
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
        if not hasattr(_torchcam(self.name), self.cam_class):
            raise UnsupportedBaselineError(
                f"The installed torchcam has no {self.cam_class}; upgrade it: pip install -U 'torchcam>=0.4'."
            )
        self._init_layer(layer, reshape_transform)

    def _options(self, images: torch.Tensor) -> dict[str, Any]:
        return {}

    def _extractor(self, images: torch.Tensor, reshape: Any) -> Any:
        cls = getattr(_torchcam(self.name), self.cam_class)
        kw: dict[str, Any] = {"input_shape": tuple(images.shape[1:]), **self._options(images)}
        if reshape is not None:
            kw["reshape_transform"] = reshape
        with preserved_modes(self.model):
            try:
                return cls(self.model, self.layer_name, **kw)
            except TypeError as e:
                if reshape is not None and "reshape_transform" in str(e):
                    raise UnsupportedBaselineError(
                        f"torchcam's {self.cam_class} of the installed version cannot fold the token / NHWC layer "
                        f"{self.layer_name!r} into a map; torchcam>=0.5 can: pip install -U torchcam."
                    ) from None
                raise

    def _attribute(self, images: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        hw = (int(images.shape[-2]), int(images.shape[-1]))
        reshape = None if self._layout(hw) == "NCHW" else self._fold
        extractor = self._extractor(images, reshape)
        try:
            scores = model_logits(self.model, images)
            cams = extractor([int(t) for t in target.tolist()], scores)
        finally:
            extractor.remove_hooks()
        cam = cams[0] if len(cams) == 1 else type(extractor).fuse_cams(cams)
        return F.interpolate(cam[:, None].float(), size=hw, mode="bilinear", align_corners=False)


@register_baseline
class _TCCAM(_TorchCAM):
    name = "torchcam_cam"
    label = "CAM (torchcam)"
    cam_class = "CAM"

    def _options(self, images: torch.Tensor) -> dict[str, Any]:
        linear = [n for n, m in self.model.named_modules() if isinstance(m, nn.Linear)]
        if not linear:
            raise UnsupportedBaselineError(
                f"CAM (torchcam) weights the maps with the classifier's nn.Linear, and {type(self.model).__name__} "
                "has none. Use a gradient method (torchcam_gradcam) for this model."
            )
        return {"fc_layer": linear[-1]}


@register_baseline
class _TCGradCAM(_TorchCAM):
    name = "torchcam_gradcam"
    label = "Grad-CAM (torchcam)"
    cam_class = "GradCAM"


@register_baseline
class _TCGradCAMpp(_TorchCAM):
    name = "torchcam_gradcam++"
    label = "Grad-CAM++ (torchcam)"
    cam_class = "GradCAMpp"


@register_baseline
class _TCSmoothGradCAMpp(_TorchCAM):
    name = "torchcam_smoothgradcam++"
    label = "Smooth Grad-CAM++ (torchcam)"
    cam_class = "SmoothGradCAMpp"


@register_baseline
class _TCXGradCAM(_TorchCAM):
    name = "torchcam_xgradcam"
    label = "XGrad-CAM (torchcam)"
    cam_class = "XGradCAM"


@register_baseline
class _TCLayerCAM(_TorchCAM):
    name = "torchcam_layercam"
    label = "Layer-CAM (torchcam)"
    cam_class = "LayerCAM"


@register_baseline
class _TCScoreCAM(BatchSized, _TorchCAM):
    name = "torchcam_scorecam"
    label = "Score-CAM (torchcam)"
    cam_class = "ScoreCAM"

    def _options(self, images: torch.Tensor) -> dict[str, Any]:
        return {"batch_size": self.batch_size}


def _vit_blocks(model: nn.Module) -> list[str]:
    """Names of the transformer blocks LeGrad can read: a ``self_attention`` that is an ``nn.MultiheadAttention``."""
    return [
        n for n, m in model.named_modules() if isinstance(getattr(m, "self_attention", None), nn.MultiheadAttention)
    ]


@register_baseline
class _LeGrad(Attributor):
    """LeGrad (Bousselham et al., 2024) for vision transformers, from torchcam (>= 0.5).

    ``layers``: the transformer blocks to read (names or modules; default: the last
    ``n_layers`` blocks). torchcam supports torchvision ``VisionTransformer`` models (blocks
    with a batch-first ``nn.MultiheadAttention`` ``self_attention``); other transformers
    (timm's fused attention) are refused with `UnsupportedBaselineError`.
    """

    name = "legrad"
    label = "LeGrad"
    optional = True

    def __init__(
        self,
        model: nn.Module,
        *,
        layers: Sequence[str | nn.Module] | None = None,
        n_layers: int = 4,
        score_projection: Callable[[torch.Tensor], torch.Tensor] | None = None,
        prefix_tokens: int = 1,
        eval_mode: bool = True,
    ) -> None:
        super().__init__(model, eval_mode=eval_mode)
        if not hasattr(_torchcam("LeGrad"), "LeGrad"):
            raise UnsupportedBaselineError(
                "The installed torchcam has no LeGrad (added in 0.5): pip install -U torchcam."
            )
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
            raise InputError(f"`n_layers` must be a positive int, got {n_layers!r}.")
        blocks = _vit_blocks(model)
        if not blocks:
            raise UnsupportedBaselineError(
                f"LeGrad (torchcam) reads attention from transformer blocks with a batch-first nn.MultiheadAttention "
                f"`self_attention` (torchvision's VisionTransformer); {type(model).__name__} has none "
                "(a CNN, or timm's fused attention). Use a layer method (gradcam, torchcam_gradcam) for this model."
            )
        self.layers = [resolve_layer(model, b)[0] for b in layers] if layers is not None else blocks[-n_layers:]
        self.score_projection, self.prefix_tokens = score_projection, prefix_tokens

    def _attribute(self, images: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        methods = _torchcam("LeGrad")
        kw = {"score_projection": self.score_projection} if self.score_projection is not None else {}
        try:
            extractor = methods.LeGrad(self.model, list(self.layers), prefix_tokens=self.prefix_tokens, **kw)
        except (TypeError, ValueError) as e:
            raise UnsupportedBaselineError(f"torchcam's LeGrad cannot explain this model: {e}") from None
        try:
            scores = model_logits(self.model, images)
            cams = extractor([int(t) for t in target.tolist()], scores)
        finally:
            extractor.remove_hooks()
        cam = cams[0] if len(cams) == 1 else type(extractor).fuse_cams(cams)
        return F.interpolate(cam[:, None].float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
