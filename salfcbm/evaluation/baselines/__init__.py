"""Heatmap baselines behind one interface, for comparing against SALF-CBM (paper section 4.2, Table 2).

``make_baseline(name, model, layer)`` returns an `Attributor`;
``attributor.attribute(images, target)`` returns a ``(B, 1, H, W)`` float
heatmap at the input size, whatever the method. The methods are the ones of the
paper's Table 2, from the libraries people use for them, plus two floors:

| name | implementation | `layer` |
|---|---|---|
| `integrated_gradients` | Captum `IntegratedGradients` | ignored |
| `gradcam` | Captum `LayerGradCam` + bilinear upsampling | used |
| `lrp` | Captum `LRP` (epsilon rule) | ignored |
| `gradcam++` | pytorch-grad-cam `GradCAMPlusPlus` | used |
| `scorecam` | pytorch-grad-cam `ScoreCAM` | used |
| `fullgrad` | pytorch-grad-cam `FullGrad` | ignored |
| `random` | seeded uniform noise | ignored |
| `center` | centred Gaussian (centre-bias floor) | ignored |
| `torchcam_cam`, `torchcam_gradcam`, `torchcam_gradcam++` | torchcam's CAM extractors (optional) | used |
| `torchcam_smoothgradcam++`, `torchcam_xgradcam` | torchcam (optional) | used |
| `torchcam_layercam`, `torchcam_scorecam` | torchcam (optional) | used |
| `legrad` | torchcam `LeGrad` (vision transformers; optional) | transformer blocks (``layers=``) |

Used layers may be omitted: ``layer=None`` picks the last spatial stage
(`salfcbm.core.tap.default_layer`). Token layers (ViT ``(B, N, C)``) and NHWC
stages (Swin) are folded into a ``(B, C, h, w)`` map with the same logic as
`salfcbm.core.tap.FeatureTap` (prefix tokens dropped, grid from the input
size), unless you pass your own ``reshape_transform``.

Conventions, for every attributor:

* The model is put in ``eval()`` mode for the call (``eval_mode=True``, the
  default; pytorch-grad-cam would otherwise do it silently and leave it so) and
  every module's train/eval flag is restored afterwards.
* No hook outlives a call, whether it succeeds or raises; parameters'
  ``.grad`` are restored (pytorch-grad-cam calls ``backward()``).
* ``target=None`` explains the model's top-1 class.
* Values are the method's own: Captum methods return raw attributions (IG and
  LRP summed over colour channels, keeping the sign; ``channel_reduction="abs_sum"``
  sums absolute values), pytorch-grad-cam methods return maps min-max scaled to
  ``[0, 1]`` per image. The segmentation metrics are invariant to a positive
  affine rescaling of each heatmap and deletion/insertion uses only the order
  of values, so this does not matter there.

Needs ``captum`` and ``grad-cam`` (``pip install 'salfcbm[baselines]'``); the torchcam methods
need ``torchcam`` (in the same extra), and raise `MissingExtraError` naming the install without it.

One file per family: `captum` (integrated gradients, Grad-CAM, LRP), `gradcam` (pytorch-grad-cam's
Grad-CAM++, Score-CAM, FullGrad), `torchcam` (the optional torchcam methods), `floors` (random,
center); `base` holds `Attributor` and `registry` the open registry: `register_baseline` adds a
method of your own, from anywhere, under its name (see ``docs/architecture.md``).
"""

from salfcbm.errors import UnsupportedBaselineError
from salfcbm.evaluation.baselines.base import Attributor, BaselineContext
from salfcbm.evaluation.baselines.registry import (
    baseline_class,
    baseline_label,
    list_baselines,
    make_baseline,
    register_baseline,
    unregister_baseline,
)

# the package's own baselines register themselves on import, in this order (list_baselines' order)
from salfcbm.evaluation.baselines import captum, gradcam, floors, torchcam  # noqa: E402,F401  isort: skip
from salfcbm.evaluation.timing import time_attribution  # noqa: E402

__all__ = [
    "Attributor",
    "BaselineContext",
    "UnsupportedBaselineError",
    "baseline_class",
    "baseline_label",
    "list_baselines",
    "make_baseline",
    "register_baseline",
    "time_attribution",
    "unregister_baseline",
]
