"""Backbones and saved models from command-line flags: ``--backbone``, ``--backbone-weights``, ``--model``.

Errors name the flag that fixes them (not a Python argument).
"""

from __future__ import annotations

import json
from pathlib import Path

from salfcbm.cli.args import HUB_ID

__all__ = ["build_cli_backbone", "cli_backbone_error", "load_model", "load_state_file", "model_source", "spec_name"]


def load_state_file(path: Path) -> dict:
    """A state dict from ``.safetensors`` (or a torch file, loaded with ``weights_only=True``)."""
    import torch

    from salfcbm.errors import WeightsFormatError

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise WeightsFormatError(f"Could not read backbone weights from {str(path)!r}: {type(e).__name__}: {e}") from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def build_cli_backbone(name: str, weights: str | None):
    """The backbone named ``name`` with ``weights``: a tag, ``"default"``, ``"none"`` or a local file.

    Returns ``(module, spec_weights)``: what the saved config records as the spec's weights
    (``None`` for a random init, the tag, or ``"file:<sha256>"`` for a local file, which
    ``salfcbm explain --backbone-weights FILE`` checks when it rebuilds the backbone).
    """
    from salfcbm._utils.io import sha256_file
    from salfcbm.core.backbones import build_backbone, parse_backbone_name
    from salfcbm.errors import BackboneSpecError, WeightsFormatError

    weights = "default" if weights in (None, "") else weights
    local = Path(weights).expanduser()
    is_file = local.is_file() or weights.endswith((".safetensors", ".pt", ".pth", ".bin"))
    if weights == "none" or is_file:
        spec = parse_backbone_name(name, pretrained=False)
    else:
        spec = parse_backbone_name(name, pretrained=True)
        if weights != "default":
            spec["weights"] = weights
    module = build_backbone(spec)
    if not is_file:
        return module, spec["weights"]
    if not local.is_file():
        raise FileNotFoundError(f"Backbone weights file {weights!r} does not exist; pass a tag, 'none' or a file.")
    state = load_state_file(local)
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise WeightsFormatError(f"{str(local)!r} does not fit the backbone {name!r}: {str(e).splitlines()[0]}") from e
    if missing:
        raise BackboneSpecError(
            f"{str(local)!r} lacks {len(missing)} weights of {name!r} (e.g. {missing[:3]}); pass the file saved "
            "from this architecture."
        )
    return module, f"file:{sha256_file(local)}"


def model_source(path: str) -> tuple[str, Path | None]:
    """``("demo", run_dir)``, ``("dir", model_dir)`` or ``("hub", None)`` for ``--model``; bad paths fail here."""
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "demo_config.json").is_file() and (p / "model").is_dir():
            return "demo", p
        if p.name == "model" and (p.parent / "demo_config.json").is_file() and (p.parent / "backbone.safetensors").is_file():
            return "demo", p.parent
        if not (p / "config.json").is_file() or not (p / "model.safetensors").is_file():
            raise FileNotFoundError(
                f"{path!r} is a directory but holds no saved SALF-CBM (config.json + model.safetensors); pass the "
                "directory written by `save_pretrained`, a `salfcbm train` run's model/ folder or a demo run folder."
            )
        return "dir", p
    if p.exists():
        raise FileNotFoundError(f"--model {path!r} is a file; pass the directory that holds config.json and model.safetensors.")
    if not HUB_ID.match(path) or Path(path.split("/")[0]).is_dir():
        raise FileNotFoundError(f"No model directory {path!r} (and it is not a Hub repo id like 'user/name').")
    return "hub", None


def load_model(args):
    """The model ``--model`` names (with ``--backbone``/``--backbone-weights`` when given), in eval mode."""
    from salfcbm import SALFCBM  # the model class with its explanation methods

    kind, path = model_source(args.model)
    if kind == "demo":
        if args.backbone:
            raise FileNotFoundError("--backbone does not apply to a demo run; its backbone is in the run folder.")
        from salfcbm.demo.run import load_demo

        return load_demo(path)[0]
    kwargs = {}
    if args.backbone or args.backbone_weights:
        name = args.backbone or spec_name(path)
        kwargs["backbone"], _ = build_cli_backbone(name, args.backbone_weights)
    kwargs["verify_backbone"] = not getattr(args, "no_verify_backbone", False)
    from salfcbm.errors import BackboneMismatchError, BackboneSpecError, WeightsFormatError

    try:
        return SALFCBM.from_pretrained(str(path) if path else args.model, **kwargs).eval()
    except (BackboneMismatchError, BackboneSpecError, WeightsFormatError) as e:
        raise cli_backbone_error(e, args, path) from None


def cli_backbone_error(e: Exception, args, path: Path | None) -> Exception:
    """The loading error of a backbone, with the fix phrased in this command's flags (not Python)."""
    from salfcbm.core.backbone_weights import BACKBONE_WEIGHTS_NAME
    from salfcbm.errors import BackboneMismatchError, BackboneSpecError

    try:
        saved = json.loads((path / "config.json").read_text()) if path else {}
    except (OSError, ValueError):
        saved = {}
    spec, what = saved.get("backbone") or {}, f"--model {args.model}"
    given = "--backbone/--backbone-weights" if args.backbone or args.backbone_weights else "the saved spec"
    if isinstance(e, BackboneMismatchError):
        lost = ("It was trained on a random init whose weights were not saved with it (train it again with this "
                "salfcbm, which saves them). " if spec.get("weights") is None and not saved.get("backbone_weights_sha256")
                else f"Its folder has its own {BACKBONE_WEIGHTS_NAME}: drop --backbone/--backbone-weights to use it. "
                if saved.get("backbone_weights_sha256") and given != "the saved spec" else "")
        return BackboneMismatchError(
            f"{what}: the backbone built from {given} has other weights (fingerprint {getattr(e, 'got', '?')}) than the "
            f"one the model was trained with ({getattr(e, 'expected', '?')}), so its concepts would be wrong. {lost}"
            "Pass the weights it was trained with: --backbone-weights FILE (a .safetensors or .pt state dict; add "
            "--backbone NAME if needed), or explain anyway with --no-verify-backbone."
        )
    if saved.get("backbone_weights_sha256") and path and not (path / BACKBONE_WEIGHTS_NAME).is_file():
        return FileNotFoundError(f"{what}: config.json records the backbone's weights in {BACKBONE_WEIGHTS_NAME}, "
                                 "which is missing. Copy the whole saved folder, or pass the backbone's weights with "
                                 "--backbone-weights FILE.")
    if spec.get("source") == "custom":
        return BackboneSpecError(
            f"{what} has a custom backbone ({spec.get('name')}), which `salfcbm explain` cannot rebuild: --backbone "
            "takes timm:NAME or torchvision:NAME only. Load the model in Python with your module: "
            "SALFCBM.from_pretrained(path, backbone=net)."
        )
    if str(spec.get("weights") or "").startswith("file:"):
        return BackboneSpecError(
            f"{what} was trained on {spec['source']}:{spec['name']} with backbone weights from a local file (sha256 "
            f"{spec['weights'][5:17]}...), which are not saved with it: pass that file with --backbone-weights FILE."
        )
    return e


def spec_name(path: Path | None) -> str:
    """``SOURCE:NAME`` of the backbone a saved model's ``config.json`` names (for ``--backbone-weights`` alone)."""
    from salfcbm.errors import BackboneSpecError

    spec = json.loads((path / "config.json").read_text()).get("backbone") if path else None
    if not spec or spec.get("source") not in ("timm", "torchvision"):
        raise BackboneSpecError("--backbone-weights needs --backbone NAME for this model (its backbone is not named).")
    from salfcbm.core.persistence import check_backbone_source

    check_backbone_source(spec, str(path), trusted=False)  # a location in a file (local-dir:, hf-hub:) is no name
    return f"{spec['source']}:{spec['name']}"
