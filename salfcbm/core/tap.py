"""Read a spatial feature map out of any backbone.

`FeatureTap` hooks one module of a timm or torchvision model and turns
whatever it emits into a ``(B, C, h, w)`` map (paper section 3.3: "for ViTs, the
patch tokens are reshaped into their original spatial formation"):

* ``NCHW`` maps (CNNs) are taken as they are;
* ``NHWC`` stages (Swin in timm and torchvision, some timm stages) are permuted;
* token sequences ``(B, N, C)`` lose their ``num_prefix_tokens`` leading tokens
  (CLS, distillation, register tokens) and are folded into the grid that the
  actual input size implies, so non-square and dynamic-size inputs work;
* optionally the CLS token is concatenated to every position along channels
  (paper appendix B.1).

The layout and the number of prefix tokens are found once, when the tap is
built, from the model's own contract (timm ``feature_info``,
``num_prefix_tokens``, torchvision ``class_token``) and from one probing forward
pass; nothing is hard-coded per architecture.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from salfcbm._utils.modes import module_device_dtype, preserved_modes
from salfcbm.errors import (
    BatchMismatchError,
    InputError,
    LayerNotFoundError,
    NonSpatialLayerError,
    UnsupportedOutputError,
)

__all__ = ["FeatureTap", "LayerInfo", "probe_layers", "default_layer", "default_input_size", "first_tensor"]

_HEAD_NAMES = {"head", "heads", "fc", "classifier", "last_linear", "aux_logits", "AuxLogits", "fc_norm", "head_drop"}
_MAX_PREFIX = 16
_PROBE_BATCH = 2  # probes run on 2 images, so that an output whose batch is not the input's shows
_COMPILE_HOOK_ID = -1  # key of the call-scoped hook under torch.compile (RemovableHandle ids are >= 0)


class _StopForward(Exception):
    """Raised by the hook to skip the rest of the backbone once the map is captured (``args[0]``: the
    call's `_Capture`)."""


class _Capture:
    """What one `FeatureTap` call asked for and what it got: the first map its forward pass emits."""

    def __init__(self, tap: FeatureTap, x: torch.Tensor, stop: bool):
        self.tap, self.stop = tap, stop
        self.input_hw, self.batch = (int(x.shape[-2]), int(x.shape[-1])), x.shape[0]
        self.fmap: torch.Tensor | None = None

    def hook(self, _m, _i, out) -> None:
        if self.fmap is None:  # a module run twice in one pass (shared blocks): its first output
            self.fmap = self.tap.to_map(out, self.input_hw, self.batch)
        if self.stop:
            raise _StopForward(self)


class _Dispatcher:
    """The one forward hook a tapped module carries while calls are in flight.

    The forward pass runs in the thread that called, so the hook hands the module's output to
    the innermost call of *that* thread (a stack per thread: a call made from inside another
    call's forward pass captures its own map). A forward pass of a thread with no call in flight
    (the user running the backbone directly) passes through untouched.
    """

    def __init__(self, module: nn.Module):
        self.calls = 0
        self.local = threading.local()
        self.handle = module.register_forward_hook(self)

    def stack(self) -> list[_Capture]:
        stack = getattr(self.local, "stack", None)
        if stack is None:
            stack = self.local.stack = []
        return stack

    def __call__(self, m, i, out) -> None:
        stack = getattr(self.local, "stack", None)
        if stack:
            stack[-1].hook(m, i, out)


_DISPATCH_LOCK = threading.Lock()
_DISPATCHERS: dict[nn.Module, _Dispatcher] = {}


@contextmanager
def _capturing(module: nn.Module, slot: _Capture) -> Iterator[None]:
    """Route ``module``'s output in this thread to ``slot`` for the block.

    The dispatcher is registered by the first call in flight on ``module`` and removed by the
    last one (counted under a lock), so no hook outlives the calls and concurrent calls never
    add or remove hooks under each other's forward pass.
    """
    with _DISPATCH_LOCK:
        d = _DISPATCHERS.get(module)
        if d is None:
            d = _DISPATCHERS[module] = _Dispatcher(module)
        d.calls += 1
    stack = d.stack()
    stack.append(slot)
    try:
        yield
    finally:
        stack.pop()
        with _DISPATCH_LOCK:
            d.calls -= 1
            if d.calls == 0:
                d.handle.remove()
                del _DISPATCHERS[module]


def _pick_tensor(out, batch: int | None = None, element: int | None = None) -> tuple[int, torch.Tensor]:
    """``(i, t)``: the tensor ``t`` a module emitted and its position ``i`` among the output's tensors.

    The output itself, a tensor of a tuple/list, or ``last_hidden_state``. ``element`` picks the
    tensor a probe chose; otherwise, with ``batch`` (the number of input images), the first whose
    leading dimension is ``batch`` (a block returning ``(inner tokens, outer tokens)``, like TNT,
    whose inner pixel tokens have batch ``B x 196``, is read at its outer tokens), else the first.
    With ``batch``, `BatchMismatchError` unless the tensor has that batch size.
    """
    if isinstance(out, torch.Tensor):
        tensors = [out]
    elif isinstance(out, (tuple, list)):
        tensors = [o for o in out if isinstance(o, torch.Tensor)]
    else:
        tensors = [getattr(out, a, None) for a in ("last_hidden_state", "hidden_states", "features")]
        tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
    if not tensors:
        raise UnsupportedOutputError(
            f"The hooked module returned {type(out).__name__}, which holds no tensor salfcbm can read. "
            "Choose a `layer=` whose output is a tensor (a stage, block or norm layer)."
        )
    if element is not None and element < len(tensors):
        order = [element]
    else:
        order = list(range(len(tensors))) if batch is not None else [0]
    for i in order:
        if batch is None or (tensors[i].dim() > 0 and tensors[i].shape[0] == batch):
            return i, tensors[i]
    shapes = ", ".join(str(tuple(t.shape)) for t in (tensors if element is None else tensors[element:element + 1]))
    raise BatchMismatchError(
        f"it emits {shapes} for a batch of {batch} images: no tensor has one entry per image "
        "(tokens folded into the batch, such as TNT's inner pixel tokens)"
    )


def first_tensor(out, batch: int | None = None) -> torch.Tensor:
    """The tensor a module emitted: ``out`` itself, a tensor of a tuple / list, or ``last_hidden_state``
    (with ``batch``, the first whose leading dimension is ``batch``, else `BatchMismatchError`)."""
    return _pick_tensor(out, batch)[1]


def _stride_fits(h: int, w: int, H: int, W: int) -> bool:
    """True if an ``h x w`` map is a down-sampling of an ``H x W`` input by one integer stride."""
    if h < 1 or w < 1 or h > H or w > W:
        return False
    for s in {max(1, round(H / h)), max(1, round(W / w)), max(1, H // h), max(1, W // w)}:
        if abs(h - H / s) <= 1.0 and abs(w - W / s) <= 1.0:
            return True
    return False


def token_grid(n: int, H: int, W: int) -> tuple[int, int] | None:
    """The ``(h, w)`` grid with ``h * w == n`` that matches an ``H x W`` input, or ``None``."""
    if n < 1:
        return None
    best, best_err = None, math.inf
    for h in range(1, int(math.isqrt(n)) + 1):
        if n % h:
            continue
        for hh, ww in ((h, n // h), (n // h, h)):
            if _stride_fits(hh, ww, H, W):
                err = abs(math.log((hh / ww) / (H / W)))
                if err < best_err:
                    best, best_err = (hh, ww), err
    return best


@dataclass
class LayerInfo:
    """What one module emits on a probing input."""

    name: str
    shape: tuple[int, ...]
    layout: str | None  # "NCHW", "NHWC", "NLC" or None (not spatial)
    grid: tuple[int, int] | None
    channels: int | None
    num_prefix_tokens: int = 0
    reason: str = ""
    keeps_batch: bool = True  # False: no tensor of the output has the input's batch size
    element: int = 0  # which tensor of a tuple/list output holds the map (the first with the input's batch)

    @property
    def spatial(self) -> bool:
        return self.layout is not None and self.grid is not None and self.grid[0] * self.grid[1] > 1


def contract_prefix_tokens(backbone: nn.Module) -> int | None:
    """Prefix tokens the model declares: timm ``num_prefix_tokens``, torchvision ``class_token``."""
    n = getattr(backbone, "num_prefix_tokens", None)
    if isinstance(n, int):
        return n
    if isinstance(getattr(backbone, "class_token", None), torch.Tensor):  # torchvision ViT
        return 1
    return None


def has_class_token(backbone: nn.Module) -> bool:
    """Whether the model's first token is a CLS token (timm ``cls_token``, torchvision ``class_token``)."""
    for attr in ("cls_token", "class_token"):
        if isinstance(getattr(backbone, attr, None), torch.Tensor):
            return True
    return bool(getattr(backbone, "has_class_token", False))


def classify_output(
    name: str,
    t: torch.Tensor,
    input_hw: tuple[int, int],
    *,
    prefix_tokens: int | None = None,
    channels_hint: int | None = None,
    prefer_nhwc: bool = False,
) -> LayerInfo:
    """Decide whether ``t`` (emitted by module ``name`` for an ``H x W`` input) is a spatial map."""
    H, W = input_hw
    shape = tuple(t.shape)
    if t.dim() == 4:
        _, a, b, c = shape
        nchw, nhwc = _stride_fits(b, c, H, W), _stride_fits(a, b, H, W)
        if nchw and nhwc:  # e.g. (B, 7, 7, 7): use the model's channel count or output format
            if channels_hint is not None and c == channels_hint and a != channels_hint:
                nchw = False
            elif not prefer_nhwc:
                nhwc = False
            else:
                nchw = False
        if nchw:
            return LayerInfo(name, shape, "NCHW", (b, c), a)
        if nhwc:
            return LayerInfo(name, shape, "NHWC", (a, b), c)
        return LayerInfo(name, shape, None, None, None, reason=f"4-D output {shape} is not a down-sampled {H}x{W} map")
    if t.dim() == 3:
        _, N, C = shape
        # the model's contract first; a layer that runs before the prefix tokens are prepended
        # (e.g. the patch embedding) has fewer, so every count is checked against the grid
        ks = [k for k in range(0, min(_MAX_PREFIX, N - 1) + 1) if k != prefix_tokens]
        if prefix_tokens is not None and 0 <= prefix_tokens < N:
            ks.insert(0, prefix_tokens)
        for k in ks:
            grid = token_grid(N - k, H, W)
            if grid is not None:
                return LayerInfo(name, shape, "NLC", grid, C, num_prefix_tokens=k)
        return LayerInfo(
            name, shape, None, None, None, reason=f"{N} tokens do not fold into a grid for a {H}x{W} input"
        )
    return LayerInfo(name, shape, None, None, None, reason=f"{t.dim()}-D output {shape} has no spatial axes")


def default_input_size(backbone: nn.Module) -> tuple[int, int]:
    """The input resolution the model expects (its patch embedding, torchvision ``image_size``,
    timm ``pretrained_cfg``), else 224."""
    pe = getattr(backbone, "patch_embed", None)
    img = getattr(pe, "img_size", None)
    if isinstance(img, (tuple, list)) and len(img) == 2 and all(isinstance(v, int) for v in img):
        return int(img[0]), int(img[1])
    size = getattr(backbone, "image_size", None)  # torchvision ViT
    if isinstance(size, int):
        return size, size
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(backbone, attr, None)
        if isinstance(cfg, dict) and cfg.get("input_size"):
            _, h, w = cfg["input_size"]
            return int(h), int(w)
    return 224, 224


def probe_layers(
    backbone: nn.Module, input_size: tuple[int, int] | None = None, names: Sequence[str] | None = None
) -> list[LayerInfo]:
    """Run one forward pass and describe what every module (or the given ``names``) emits.

    The probe is a batch of two images: a module whose output keeps no per-image batch is
    described as not spatial (``keeps_batch=False``). Modules are listed in the order their
    forward *finished*, so the last spatial entry is the deepest spatial stage. The model's
    train/eval mode is restored. Forward passes of other threads are not recorded.
    """
    H, W = input_size or default_input_size(backbone)
    modules = dict(backbone.named_modules())
    wanted = list(names) if names is not None else [n for n in modules if n]
    prefix = contract_prefix_tokens(backbone)
    prefer_nhwc = str(getattr(backbone, "output_fmt", "")).upper() == "NHWC"
    seen: dict[str, LayerInfo] = {}
    order: list[str] = []

    owner = threading.get_ident()  # another thread's forward pass of a shared backbone is not this probe's

    def make_hook(name):
        def hook(_m, _i, out):
            if name in seen or threading.get_ident() != owner:  # modules called twice: keep the first call
                return
            try:
                element, t = _pick_tensor(out, batch=_PROBE_BATCH)
            except UnsupportedOutputError as e:
                seen[name] = LayerInfo(name, (), None, None, None, reason=str(e))
            except BatchMismatchError as e:
                seen[name] = LayerInfo(name, (), None, None, None, reason=str(e), keeps_batch=False)
            else:
                seen[name] = classify_output(name, t, (H, W), prefix_tokens=prefix, prefer_nhwc=prefer_nhwc)
                seen[name].element = element
            order.append(name)

        return hook

    handles = []
    device, dtype = module_device_dtype(backbone)
    try:
        for n in wanted:
            handles.append(modules[n].register_forward_hook(make_hook(n)))
        with preserved_modes(backbone, mode=False), torch.no_grad():
            backbone(torch.zeros(_PROBE_BATCH, 3, H, W, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
    return [seen[n] for n in order]


def _under_head(name: str) -> bool:
    return name.split(".")[0] in _HEAD_NAMES


def default_layer(backbone: nn.Module, input_size: tuple[int, int] | None = None) -> str:
    """The last spatial stage of ``backbone``.

    timm's ``feature_info`` contract is read first (its last entry); otherwise every
    module is probed and the deepest one with a spatial output (outside the
    classifier head) wins.
    """
    return _pick_default(backbone, probe_layers(backbone, input_size), _feature_info_candidates(backbone), input_size)


def _feature_info_candidates(backbone: nn.Module) -> list[str]:
    """The last stage timm's ``feature_info`` names, when it names one of the backbone's modules."""
    modules = dict(backbone.named_modules())
    fi = getattr(backbone, "feature_info", None)
    candidates: list[str] = []
    if isinstance(fi, list) and fi and isinstance(fi[-1], dict) and fi[-1].get("module"):
        name = fi[-1]["module"].replace("_", ".") if fi[-1]["module"] not in modules else fi[-1]["module"]
        if name in modules:
            candidates.append(name)
    elif hasattr(fi, "module_name"):  # timm FeatureInfo object (features_only models)
        try:
            candidates.append(fi.module_name()[-1])
        except Exception:  # noqa: BLE001 - fall back to probing
            pass
    return candidates


def _pick_default(backbone: nn.Module, infos: list[LayerInfo], candidates: list[str],
                  input_size: tuple[int, int] | None) -> str:
    """`default_layer`'s choice among the probed ``infos``: a timm ``feature_info`` candidate, else the deepest spatial."""
    spatial = {i.name: i for i in infos if i.spatial}
    for c in candidates:
        if c in spatial:
            return c
    body = [i for i in infos if i.spatial and not _under_head(i.name)]
    pick = body or [i for i in infos if i.spatial]
    if not pick:
        raise NonSpatialLayerError(
            f"No module of {type(backbone).__name__} emits a spatial map for a "
            f"{input_size or default_input_size(backbone)} input, so there is nothing to build concept maps "
            "from. Pass `layer=` explicitly, or use a backbone with convolutional stages or patch tokens."
        )
    return pick[-1].name


def _candidates(backbone: nn.Module, input_size: tuple[int, int] | None, k: int = 3) -> str:
    """The default layer and the other deepest spatial layers, for an error message."""
    infos = probe_layers(backbone, input_size)
    names = [default_layer(backbone, input_size)]
    names += [i.name for i in reversed(infos) if i.spatial and not _under_head(i.name) and i.name not in names][:k]
    return ", ".join(f"{n!r}" for n in names)


def _probe_layer(backbone: nn.Module, layer: str, input_size: tuple[int, int] | None,
                 probed: list[LayerInfo] | None = None) -> LayerInfo:
    """What ``layer`` emits on a probe batch (read from ``probed``, a probe of every module, when given);
    a salfcbm error naming candidate layers unless it is a spatial map with one entry per image."""
    if probed is None:
        (info,) = probe_layers(backbone, input_size, names=[layer]) or [None]
    else:
        info = next((i for i in probed if i.name == layer), None)
    if info is None:
        raise NonSpatialLayerError(
            f"Module {layer!r} never ran during a forward pass of {type(backbone).__name__}; "
            f"choose a module on the forward path, e.g. {default_layer(backbone, input_size)!r}."
        )
    if not info.keeps_batch:
        raise BatchMismatchError(
            f"Module {layer!r} cannot be tapped: {info.reason}. Its map would mix the images of a batch. "
            f"Choose a layer whose output has one entry per image: {_candidates(backbone, input_size)}."
        )
    if not info.spatial:
        raise NonSpatialLayerError(
            f"Module {layer!r} emits {info.shape or 'no tensor'}, which is not a spatial map "
            f"({info.reason or 'a single position'}). SALF-CBM needs a map with several positions; "
            f"try layer={default_layer(backbone, input_size)!r} (the last spatial stage)."
        )
    return info


class FeatureTap:
    """Capture a ``(B, C, h, w)`` feature map from one module of a backbone.

    Construct, then call: configuration goes in the constructor (which probes the
    layer once, on a batch of two images, to learn its layout), data in the call.
    Calls are thread-safe and re-entrant: while calls are in flight the layer carries
    one dispatching hook that hands each thread's forward pass to the call that made
    it; the last call to end removes it (in ``finally``), so no hook outlives the
    calls, whether they succeed or raise. Every call returns one map per input image
    (`BatchMismatchError` otherwise). The user's model is never switched to
    ``eval()`` here and its parameters are never touched.

    Args:
        backbone: any ``nn.Module`` taking ``(B, 3, H, W)`` images.
        layer: module name (as in ``named_modules()``); ``None`` picks `default_layer`.
        cls_concat: concatenate the CLS token to every position along channels (appendix B.1).
        stop_early: stop the backbone's forward right after ``layer`` (skips the classifier head).
        input_size: probing resolution; defaults to the model's own.
        layout: skip the probe and use this layout (as saved in a config).
        num_prefix_tokens: with ``layout``, the number of leading tokens to drop.

    Examples:
        >>> import timm, torch
        >>> tap = FeatureTap(timm.create_model("test_vit", pretrained=False))
        >>> tap(torch.randn(2, 3, 160, 160)).shape[-2:]
        torch.Size([10, 10])
    """

    def __init__(
        self,
        backbone: nn.Module,
        layer: str | None = None,
        *,
        cls_concat: bool = False,
        stop_early: bool = True,
        input_size: tuple[int, int] | None = None,
        layout: str | None = None,
        num_prefix_tokens: int | None = None,
    ):
        if not isinstance(backbone, nn.Module):
            raise InputError(f"`backbone` must be a torch.nn.Module, got {type(backbone).__name__}.")
        self.backbone = backbone
        modules = dict(backbone.named_modules())
        probed = None  # one probe forward: the default layer is chosen from the probe that describes it
        if layer is None:
            probed = probe_layers(backbone, input_size)
            layer = _pick_default(backbone, probed, _feature_info_candidates(backbone), input_size)
        if layer not in modules or layer == "":
            raise LayerNotFoundError(layer, [n for n in modules if n])
        self.layer = layer
        self.module = modules[layer]
        self.stop_early = stop_early
        self.cls_concat = bool(cls_concat)
        if layout is None:
            info = _probe_layer(backbone, layer, input_size, probed)
            layout, num_prefix_tokens, self.channels = info.layout, info.num_prefix_tokens, info.channels
            self.element: int | None = info.element
        else:  # as saved in a config: the map is the first tensor of the output with the input's batch
            self.channels = self.element = None
        if layout not in ("NCHW", "NHWC", "NLC"):
            raise InputError(f"`layout` must be 'NCHW', 'NHWC' or 'NLC', got {layout!r}.")
        self.layout = layout
        self.num_prefix_tokens = int(num_prefix_tokens or 0)
        if self.cls_concat:
            if layout != "NLC" or self.num_prefix_tokens < 1 or not has_class_token(backbone):
                raise InputError(
                    f"cls_concat=True needs a token layer whose first token is a CLS token; {layer!r} "
                    f"emits {layout} with {self.num_prefix_tokens} prefix tokens"
                    f"{'' if has_class_token(backbone) else ' and the model has no CLS token'}. "
                    "Use cls_concat=False for this layer."
                )
        if self.channels is not None and self.cls_concat:
            self.channels *= 2

    def __repr__(self) -> str:
        return (
            f"FeatureTap(layer={self.layer!r}, layout={self.layout!r}, "
            f"num_prefix_tokens={self.num_prefix_tokens}, cls_concat={self.cls_concat})"
        )

    def to_map(self, out, input_hw: tuple[int, int], batch: int | None = None) -> torch.Tensor:
        """Turn what the hooked module emitted into ``(B, C, h, w)``.

        With ``batch`` (the number of input images), the map is read from the output's tensor
        with that batch size, and `BatchMismatchError` is raised when there is none.
        """
        try:
            t = _pick_tensor(out, batch, self.element)[1]
        except BatchMismatchError as e:
            raise BatchMismatchError(
                f"Module {self.layer!r} cannot be read per image: {e}. Its map would mix the images of the "
                f"batch. Choose a layer whose output has one entry per image (see salfcbm.core.tap.probe_layers)."
            ) from None
        if self.layout == "NCHW":
            if t.dim() != 4:
                raise InputError(f"Expected a 4-D NCHW map from {self.layer!r}, got shape {tuple(t.shape)}.")
            return t
        if self.layout == "NHWC":
            if t.dim() != 4:
                raise InputError(f"Expected a 4-D NHWC map from {self.layer!r}, got shape {tuple(t.shape)}.")
            return rearrange(t, "b h w c -> b c h w")
        if t.dim() != 3:
            raise InputError(f"Expected (B, N, C) tokens from {self.layer!r}, got shape {tuple(t.shape)}.")
        B, N, C = t.shape
        k = self.num_prefix_tokens
        grid = token_grid(N - k, *input_hw)
        if grid is None:
            raise InputError(
                f"{N - k} patch tokens from {self.layer!r} (after {k} prefix tokens) do not fold into a grid "
                f"for a {input_hw[0]}x{input_hw[1]} input. Use an input size the model's patch size divides."
            )
        h, w = grid
        fmap = rearrange(t[:, k:], "b (h w) c -> b c h w", h=h, w=w)
        if self.cls_concat:
            cls = t[:, 0, :, None, None].expand(B, C, h, w)
            fmap = torch.cat([fmap, cls], dim=1)
        return fmap

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Run the backbone on ``x`` and return the tapped map ``(B, C, h, w)``.

        Thread-safe and re-entrant: concurrent calls on one backbone share one dispatching hook
        (`_capturing`) that hands each call the map of its own forward pass.
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise InputError(
                f"Expected images as a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}."
            )
        # torch.export traces module calls on a stack that an exception would unbalance: there the
        # backbone runs to its end (its classifier head is a few extra FLOPs).
        stop = self.stop_early and not torch.compiler.is_exporting()
        slot = _Capture(self, x, stop)
        if torch.compiler.is_compiling():
            self._run_traced(x, slot)
        else:
            with _capturing(self.module, slot):
                try:
                    self.backbone(x)
                except _StopForward as e:
                    if e.args[0] is not slot:  # pragma: no cover - another call's stop cannot reach here
                        raise
        if slot.fmap is None:
            raise NonSpatialLayerError(
                f"Module {self.layer!r} did not run during the forward pass; choose a module on the forward path."
            )
        return slot.fmap  # its batch is x's (`to_map` reads the tensor with x's batch size)

    def _run_traced(self, x: torch.Tensor, slot: _Capture) -> None:
        """The call under torch.compile / torch.export: a RemovableHandle (and a lock) would break the
        graph, so the hook is put in a copy of the module's hook dict for the traced call. Dynamo
        records the two attribute stores as side effects; what runs restores the module's own dict
        object, so eager calls of other threads, whose dispatcher lives in that dict, are untouched."""
        saved = self.module._forward_hooks
        hooks = {k: v for k, v in saved.items() if not isinstance(v, _Dispatcher)}
        hooks[_COMPILE_HOOK_ID] = slot.hook
        self.module._forward_hooks = hooks
        try:
            self.backbone(x)
        except _StopForward:
            pass
        finally:
            self.module._forward_hooks = saved
