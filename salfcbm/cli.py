"""The ``salfcbm`` command line: ``demo``, ``similarities``, ``train``, ``explain``, ``push``, ``app``, ``reproduce``.

Every subcommand has ``--help`` (with defaults) and ``--quiet``; long steps show one
labelled progress bar per stage; training writes a run directory with ``args.json``,
``metrics.json`` and the saved model. Every value is checked at parse time (bounded numbers,
path kinds, devices, conflicting flags). A user error (a missing file, a bad argument, a
corrupt image, any `SalfCBMError`) ends with one line, ``salfcbm: error: ...``, and exit
code 2; set ``SALFCBM_DEBUG=1`` to see the Python traceback instead. SIGINT and SIGTERM end
with one line and exit codes 130 and 143.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import sys
import threading
from pathlib import Path

__all__ = ["main", "build_parser"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ADAPTER_FILES = ("config.json", "model.safetensors", "README.md", "backbone.safetensors")


# ----------------------------------------------------------------------------- argument types
from salfcbm._utils.argtypes import (  # noqa: E402 - the checked argument types, shared with `salfcbm reproduce`
    clip_name,
    _concepts_file,
    _device,
    _float_in,
    _grid_size,
    _image_size,
    _in_dir,
    _in_file,
    _int_in,
    _lr,
    _nonneg_int,
    _out_dir,
    _out_file,
    _positive_float,
    _positive_int,
    _seed,
    _similarity,
    _threads,
    _workers as _worker_count,
)

_grid = _positive_int  # kept for callers of the old name


# ----------------------------------------------------------------------------- shared pieces
def _set_threads(args) -> None:
    n = getattr(args, "threads", 0)
    if n:
        import torch

        torch.set_num_threads(n)


def _workers(args) -> int:
    """``--num-workers``, capped at this process's CPU cores; by default ``min(4, cores - 1)``."""
    from salfcbm._utils.workers import resolve_num_workers

    return resolve_num_workers(args.num_workers)


def _scorer(args):
    """The CLIP scorer; a random init (``--pretrained none``) is seeded so a rerun resumes its stores."""
    import torch

    from salfcbm.supervision.scorers import CLIPScorer

    pretrained = None if args.pretrained in (None, "", "none") else args.pretrained
    with torch.random.fork_rng(devices=[]):  # a random init (`none`, a local-dir: without weights) is seeded
        torch.manual_seed(args.seed)
        return CLIPScorer(args.scorer, pretrained=pretrained, device=args.device, precision=args.precision)


def _image_folder(root: str, size: int, skip_corrupt: bool = False):
    from salfcbm.datasets.folder import ImageFolderDataset

    return ImageFolderDataset(root, size=size, skip_corrupt=skip_corrupt)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_state_file(path: Path) -> dict:
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
    state = _load_state_file(local)
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise WeightsFormatError(f"{str(local)!r} does not fit the backbone {name!r}: {str(e).splitlines()[0]}") from e
    if missing:
        raise BackboneSpecError(
            f"{str(local)!r} lacks {len(missing)} weights of {name!r} (e.g. {missing[:3]}); pass the file saved "
            "from this architecture."
        )
    return module, f"file:{_sha256(local)}"


def _write_args(run: Path, args) -> None:
    from salfcbm._utils.io import atomic_write_bytes

    plain = {k: v for k, v in vars(args).items() if k != "func"}
    atomic_write_bytes(run / "args.json", (json.dumps(plain, indent=2, default=str) + "\n").encode())


# ----------------------------------------------------------------------------- commands
def cmd_demo(args) -> int:
    from salfcbm.demo.run import DemoConfig, run_demo

    _set_threads(args)
    cfg = DemoConfig(
        n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, backbone_epochs=args.backbone_epochs,
        bottleneck_steps=args.bottleneck_steps, seed=args.seed,
    )
    res = run_demo(args.out, cfg, progress=not args.quiet, device=args.device)
    m = res.metrics
    s, b = m["salfcbm"], m.get("standard_sparse", {})
    seg, rnd = m["segmentation"], m["segmentation_random"]
    print()
    print("| model | test acc | val acc | NEC |")
    print("|---|---|---|---|")
    print(f"| SALF-CBM (sparse) | {s['test_accuracy']:.3f} | {s['val_accuracy']:.3f} | {s['nec']:.2f} |")
    print(f"| standard, sparse  | {b['test_accuracy']:.3f} | {b['val_accuracy']:.3f} | {b['nec']:.2f} |")
    mb = m.get("matched_nec", {}).get("standard_sparse")
    if mb:
        print(f"| standard, sparse, same NEC | {mb.get('test_accuracy', float('nan')):.3f} | {mb['val_accuracy']:.3f} "
              f"| {mb['nec']:.2f} |")
    print()
    print(f"concept maps vs ground-truth masks: mIoU {seg['miou']:.3f} (random maps {rnd['miou']:.3f}), "
          f"pixel acc {seg['pixel_accuracy']:.3f}, mAP {seg['map']:.3f} (random {rnd['map']:.3f})")
    if seg.get("loc_pointing_game") is not None:
        f3 = lambda d, k: "-" if d.get(k) is None else f"{d[k]:.3f}"  # noqa: E731
        print(f"concept maps, the field's metrics (docs/evaluation.md): pointing game {f3(seg, 'loc_pointing_game')} "
              f"(random {f3(rnd, 'loc_pointing_game')}), relevance mass {f3(seg, 'loc_relevance_mass')} "
              f"(rectified {f3(seg, 'loc_relevance_mass_relu')}), relevance rank {f3(seg, 'loc_relevance_rank')}, "
              f"top-k intersection {f3(seg, 'loc_top_k_intersection')}")
    cut = m.get("cutoff", {})
    print(f"dropped by the interpretability cutoff ({cut.get('statistic', '?')} statistic, {cut.get('cutoff', '?')}): "
          f"{len(m['bottleneck']['dropped'])} concepts; kept because the head uses them: "
          f"{len(cut.get('kept_for_head', []))}")
    ex = m.get("explanations")
    if ex and ex["shown"]:
        pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        print(f"top-{ex['top_k']} concepts of {ex['images']} test images with an empty ground-truth mask: "
              f"{pct(ex['shown_mask_empty'])} of all shown; {pct(ex['present']['mask_empty'])} of those shown as "
              f"present, {pct(ex['absent']['mask_empty'])} of those shown as absent")
    iv = m.get("interventions")
    if iv:
        print("intervention curves (ground-truth concepts, AUC of accuracy over k): " + ", ".join(
            f"{p} {iv['map']['auc'][p]['accuracy']:.3f} (region {iv['region']['auc'][p]['accuracy']:.3f})"
            for p in iv["map"]["auc"]))
    print(f"report: {res.out / 'report.html'}")
    print(f"model:  {res.out / 'model'}")
    return 0


def _init_distributed(args) -> None:
    """Under torchrun (WORLD_SIZE > 1): one process per GPU, ranks split the shards."""
    from salfcbm._utils.distributed import init_distributed

    args.device = init_distributed(args.device)


def cmd_similarities(args) -> int:
    from salfcbm.supervision.prompts import PromptGrid
    from salfcbm.supervision.store import compute_similarity_store

    _set_threads(args)
    _init_distributed(args)
    data = _image_folder(args.data, args.image_size, args.skip_corrupt)
    scorer = _scorer(args)
    prompts = PromptGrid(grid=(args.grid, args.grid), radius=args.radius)
    store = compute_similarity_store(args.out, data, scorer, prompts, batch_size=args.batch_size,
                                     num_workers=_workers(args), progress=not args.quiet, shard_size=args.shard_size)
    print(f"{store} complete")
    return 0


def cmd_train(args) -> int:
    import torch

    from salfcbm.core.model import wrap
    from salfcbm.supervision.concepts import load_concepts
    from salfcbm.supervision.prompts import PromptGrid
    from salfcbm.training.pipeline import BottleneckConfig, fit

    _set_threads(args)
    torch.manual_seed(args.seed)
    folders = {"train": args.train, "val": args.val, "test": args.test}
    data = {k: _image_folder(v, args.image_size, args.skip_corrupt) for k, v in folders.items() if v is not None}
    concepts = load_concepts(args.concepts)
    backbone, spec_weights = build_cli_backbone(args.backbone, args.backbone_weights)
    size = (args.image_size, args.image_size)
    model = wrap(backbone, concepts=concepts, num_classes=len(data["train"].classes),
                 class_names=data["train"].classes, layer=args.layer, grid=args.grid, pooling=args.pooling,
                 cls_concat=args.cls_concat, input_size=size, backbone_weights=spec_weights)
    # one geometry: the folders are cropped with the model's own data config (recorded in its config)
    data = {k: d.with_transform(model.image_transform) for k, d in data.items()}
    run = Path(args.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    _write_args(run, args)
    head = _head_config(args)
    settings = {"cutoff": args.cutoff, "lr": args.lr, "seed": args.seed, "cutoff_statistic": args.cutoff_statistic,
                "cutoff_guard": args.cutoff_guard}
    if args.steps is not None:
        settings["max_steps"] = args.steps
    bottleneck = (BottleneckConfig.quick if args.quick else BottleneckConfig)(**settings)
    res = fit(model, data["train"], data["val"], scorer=_scorer(args), test_data=data.get("test"),
              prompts=PromptGrid(grid=(args.grid, args.grid), radius=args.radius), run_dir=run, baseline=not args.quick,
              bottleneck=bottleneck, head=head, batch_size=args.batch_size, num_workers=_workers(args),
              device=args.device, precision=args.precision, progress=not args.quiet,
              filter_concepts=False if args.no_filter else {"activation_cutoff": args.clip_cutoff})
    if not args.quiet:
        print(json.dumps({k: v for k, v in res.metrics.items() if k != "path"}, indent=2, default=str))
    print(f"saved to {run / 'model'}")
    return 0


def _head_config(args):
    """The head selection asked for on the command line (``--preset``, ``--lam``, ``--target-nec``)."""
    from salfcbm.training.pipeline import HeadConfig

    points = args.path_points if args.path_points is not None else (10 if getattr(args, "quick", False) else None)
    kw = {"sparse": not args.dense, "n_lambdas": points}
    if args.preset:
        return HeadConfig.paper(args.preset, **kw)
    if args.lam is not None:
        return HeadConfig(select="fixed", lam=args.lam, **kw)
    if args.target_nec:
        return HeadConfig(select="nec", target_nec=args.target_nec, **kw)
    return HeadConfig(**kw)


def _model_source(path: str) -> tuple[str, Path | None]:
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
    if not _HUB_ID.match(path) or Path(path.split("/")[0]).is_dir():
        raise FileNotFoundError(f"No model directory {path!r} (and it is not a Hub repo id like 'user/name').")
    return "hub", None


def _load_model(args):
    from salfcbm import SALFCBM  # the model class with its explanation methods

    kind, path = _model_source(args.model)
    if kind == "demo":
        if args.backbone:
            raise FileNotFoundError("--backbone does not apply to a demo run; its backbone is in the run folder.")
        from salfcbm.demo.run import load_demo

        return load_demo(path)[0]
    kwargs = {}
    if args.backbone or args.backbone_weights:
        name = args.backbone or _spec_name(path)
        kwargs["backbone"], _ = build_cli_backbone(name, args.backbone_weights)
    kwargs["verify_backbone"] = not getattr(args, "no_verify_backbone", False)
    from salfcbm.errors import BackboneMismatchError, BackboneSpecError, WeightsFormatError

    try:
        return SALFCBM.from_pretrained(str(path) if path else args.model, **kwargs).eval()
    except (BackboneMismatchError, BackboneSpecError, WeightsFormatError) as e:
        raise _cli_backbone_error(e, args, path) from None


def _cli_backbone_error(e: Exception, args, path: Path | None) -> Exception:
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


def _spec_name(path: Path | None) -> str:
    from salfcbm.errors import BackboneSpecError

    spec = json.loads((path / "config.json").read_text()).get("backbone") if path else None
    if not spec or spec.get("source") not in ("timm", "torchvision"):
        raise BackboneSpecError("--backbone-weights needs --backbone NAME for this model (its backbone is not named).")
    from salfcbm.core.persistence import check_backbone_source

    check_backbone_source(spec, str(path), trusted=False)  # a location in a file (local-dir:, hf-hub:) is no name
    return f"{spec['source']}:{spec['name']}"


def _check_images(paths: list[str]) -> None:
    """Every image file opens as an image (its header and structure are read, no pixels decoded)."""
    from PIL import Image, UnidentifiedImageError

    from salfcbm.errors import CorruptImageError

    for p in paths:
        try:
            with Image.open(p) as im:
                im.verify()
        except Image.DecompressionBombError:
            continue  # a readable image; the image reader applies its size rule when the pixels are read
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise CorruptImageError(
                f"Cannot read image {p!r} ({type(e).__name__}: {e}). Remove or replace the file; nothing was "
                "explained (every image is checked before the model is loaded)."
            ) from e


def cmd_explain(args) -> int:
    from salfcbm.explain.evidence import EVIDENCE_LABELS
    from salfcbm.viz.figures import write_html_report

    _set_threads(args)
    _check_images(args.images)  # every input, before the model costs anything to load
    model = _load_model(args)
    x = model.image_transform.view(list(args.images))  # the one image entry point: what the model sees, in [0, 1]
    expl = model.explain(model.image_transform.normalize(x), top_k=args.top_k)
    out = write_html_report(args.out, x, expl, model=model, names=[os.path.basename(p) for p in args.images])
    for p, e in zip(args.images, expl):
        c = e.classes[0]
        shown = ", ".join(f"{n} ({float(s):+.2f}, {EVIDENCE_LABELS.get(k, k)})"
                          for n, s, k in zip(c.concepts, c.scores, c.evidence))
        print(f"{p}: {model.class_names[c.target]} <- " + (shown or "NO CONTRIBUTING CONCEPT: every head weight of "
                                                           "this class is zero (a degenerate head; refit it)"))
    print(f"report: {out}")
    return 0


def _check_adapter(folder: Path) -> None:
    """The saved files are a SALF-CBM adapter (schema, checksums, config and weights agree); no backbone is built."""
    from salfcbm.core import persistence

    config = persistence.read_config(str(folder / "config.json"))
    state = persistence.read_weights(str(folder / "model.safetensors"), config, verify=True)
    persistence.check_concept_count(state, config, str(folder))
    if config.backbone_weights_sha256 is not None:  # the backbone's own weights go with the adapter, unchanged
        from salfcbm._utils.io import sha256_file
        from salfcbm.core.backbone_weights import BACKBONE_WEIGHTS_NAME
        from salfcbm.errors import ChecksumError

        f = folder / BACKBONE_WEIGHTS_NAME
        if not f.is_file() or sha256_file(f) != config.backbone_weights_sha256:
            raise ChecksumError(f"{str(f)!r} is missing or does not match the SHA-256 in config.json; save the "
                                "model again (or copy the whole saved folder) before pushing.")


def cmd_push(args) -> int:
    """Upload the saved adapter files as they are: nothing is rebuilt or downloaded."""
    from huggingface_hub import HfApi

    kind, path = _model_source(args.model)
    if kind == "hub":
        raise FileNotFoundError(f"push needs a local model directory; {args.model!r} is not one.")
    folder = path / "model" if kind == "demo" else path
    _check_adapter(folder)
    from salfcbm._utils.hub import hub_call

    api = HfApi()
    hub_call("salfcbm push", api.create_repo, args.repo_id, private=args.private, exist_ok=True, repo_type="model")
    info = hub_call("salfcbm push", api.upload_folder, repo_id=args.repo_id, folder_path=str(folder),
                    allow_patterns=list(_ADAPTER_FILES), commit_message=args.message, repo_type="model")
    print(getattr(info, "commit_url", None) or info)
    return 0


# ----------------------------------------------------------------------------- the parser
class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows an option's default once, where there is one; keeps descriptions as written.

    No "(default: None)" (required arguments, optional ones without a value) and nothing
    added to a help that already says its default.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.required or not action.option_strings or action.default in (None, False, argparse.SUPPRESS)
                or "(default" in text or "%(default)" in text):
            return text
        return text + " (default: %(default)s)"


class _BadUsage(Exception):
    """A bad command line, raised by `_Parser.error` so `main` can print it as one line."""

    def __init__(self, prog: str, message: str):
        super().__init__(f"{prog}: {message} (see `{prog} --help`)")


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors become one line (``salfcbm: error: ...``) instead of usage + message."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        raise _BadUsage(self.prog, message)


def _repo_id(s: str) -> str:
    """An argparse type: a Hub repo id ``user/name``."""
    if not _HUB_ID.match(s):
        raise argparse.ArgumentTypeError(f"expected a Hub repo id like 'user/name', got {s!r}")
    return s


def _common(q: argparse.ArgumentParser, *, threads: int | None = 1) -> None:
    q.add_argument("--quiet", action="store_true", help="no progress bars; print only the result")
    if threads is not None:
        q.add_argument("--threads", type=_threads, default=threads,
                       help="torch intra-op CPU threads (0 = torch's default)")


def _scorer_args(q: argparse.ArgumentParser) -> None:
    g = q.add_argument_group("concept scorer (CLIP) and prompts")
    g.add_argument("--scorer", type=clip_name, default="ViT-B-16", help="open_clip model name, or hf-hub:ORG/REPO, or local-dir:PATH")
    g.add_argument("--pretrained", default="openai",
                   help="open_clip pretrained tag, a local checkpoint file, or 'none' for a random init (seeded by --seed)")
    g.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="precision of the scorer and of the backbone while features are computed")
    g.add_argument("--grid", type=_grid_size, default=7, help="prompting grid (GRID x GRID; 7 = 49 CLIP passes per image)")
    g.add_argument("--radius", type=_int_in(1, 4096), default=32,
                   help="prompt circle radius in pixels of a 224 px image (scaled to the scorer's resolution)")
    g.add_argument("--image-size", type=_image_size, default=224,
                   help="the backbone's input size: images are resized with the backbone's own eval transform and "
                        "centre-cropped to it; recorded in the saved config")
    g.add_argument("--skip-corrupt", action="store_true",
                   help="leave out unreadable images, images over the pixel limit (PIL.Image.MAX_IMAGE_PIXELS) or too thin to "
                        "resize, and non-regular files (each named in a warning) instead of stopping at the first one")
    g.add_argument("--batch-size", type=_int_in(1, 2**20), default=64, help="images per batch")
    g.add_argument("--num-workers", type=_worker_count, default=None,
                   help="DataLoader worker processes, at most the CPU cores available (default: min(4, cores - 1))")
    g.add_argument("--device", type=_device, default=None, help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--seed", type=_seed, default=0, help="seed of the random CLIP init, bottleneck init and batch order")


def _demo_parser(sub) -> None:
    d = sub.add_parser("demo", formatter_class=_Formatter,
                       help="train and explain a SALF-CBM on the built-in procedural scenes (offline)",
                       description="Train and explain a SALF-CBM end to end on the built-in procedural scenes, "
                                   "offline, and write OUT/report.html.")
    d.add_argument("--out", type=_out_dir, default="runs/demo", help="run directory (resumable)")
    d.add_argument("--n-train", type=_int_in(1, 10**7), default=3000, help="training scenes")
    d.add_argument("--n-val", type=_int_in(1, 10**7), default=600, help="validation scenes")
    d.add_argument("--n-test", type=_int_in(1, 10**7), default=600, help="test scenes")
    d.add_argument("--backbone-epochs", type=_int_in(1, 10**5), default=12, help="epochs of the stand-in backbone")
    d.add_argument("--bottleneck-steps", type=_int_in(1, 10**8), default=1500, help="maximum bottleneck steps")
    d.add_argument("--seed", type=_seed, default=0, help="seed of the scenes and of training")
    d.add_argument("--device", type=_device, default=None, help="torch device (default: CPU)")
    _common(d)
    d.set_defaults(func=cmd_demo)


def _train_parser(sub) -> None:
    from salfcbm.training.pipeline import BottleneckConfig

    b = BottleneckConfig()
    t = sub.add_parser("train", formatter_class=_Formatter, help="train a SALF-CBM on image folders",
                       description="Train a SALF-CBM on image folders (one sub-folder per class). The run directory "
                                   "holds args.json, the stores, metrics.json and the saved model (RUN_DIR/model); "
                                   "a rerun with the same arguments resumes.")
    t.add_argument("--backbone", required=True, help="backbone name: timm:NAME, torchvision:NAME or a timm NAME")
    t.add_argument("--backbone-weights", default="default",
                   help="'default' (the source's pretrained weights), a weights tag, a local .safetensors/.pt file, "
                        "or 'none' for a random init")
    t.add_argument("--layer", default=None, help="module to tap (default: the last spatial stage)")
    t.add_argument("--train", type=_in_dir, required=True, help="training image folder (class sub-folders)")
    t.add_argument("--val", type=_in_dir, required=True, help="validation image folder, same classes")
    t.add_argument("--test", type=_in_dir, default=None, help="optional test image folder, evaluated at the end")
    t.add_argument("--concepts", type=_concepts_file, required=True,
                   help="text file, one concept per line, or lf-cbm:NAME (a published concept set)")
    t.add_argument("--run-dir", type=_out_dir, required=True, help="run directory (resumable)")
    t.add_argument("--pooling", default="mean", choices=["mean", "softmax", "max"], help="concept-map pooling")
    t.add_argument("--cls-concat", action="store_true", help="concatenate the CLS token to every position (ViTs)")
    t.add_argument("--steps", type=_int_in(1, 10**8), default=None,
                   help="maximum bottleneck training steps (default: scaled with the training images, 500 to 5000; "
                        "--quick: 300)")
    t.add_argument("--lr", type=_lr, default=b.lr, help="bottleneck learning rate (Adam)")
    t.add_argument("--cutoff", type=_similarity, default=b.cutoff, help="interpretability cutoff (LF-CBM's 0.45)")
    t.add_argument("--cutoff-statistic", default=b.cutoff_statistic, choices=["cell", "pooled", "lfcbm"],
                   help="what the cutoff is compared with: per-cell map similarity, pooled against the prompted "
                        "targets, or LF-CBM's (pooled against the unprompted images)")
    t.add_argument("--cutoff-guard", default=b.cutoff_guard, choices=["keep", "warn"],
                   help="a concept the cutoff removes but the head uses: keep it (listed in metrics.json), or "
                        "remove it and warn (LF-CBM)")
    t.add_argument("--no-filter", action="store_true", help="skip LF-CBM's concept filters (on by default)")
    t.add_argument("--clip-cutoff", type=_similarity, default=0.25,
                   help="'never fires' filter: LF-CBM's 0.25 (0.26 CUB, 0.28 ImageNet/Places365)")
    t.add_argument("--dense", action="store_true", help="dense head instead of the sparse path")
    t.add_argument("--path-points", type=_int_in(1, 10**4), default=None,
                   help="points on the sparse head's regularisation path (default: one per 25 training images, "
                        "10 to 40; --quick: 10)")
    t.add_argument("--quick", action="store_true",
                   help="a first try: at most 300 bottleneck steps, stopping after 30 without a gain, a 10-point "
                        "head path, and no standard-sparse baseline (explicit --steps/--path-points still apply)")
    sel = t.add_mutually_exclusive_group()
    sel.add_argument("--target-nec", type=_float_in(0.0, 1e6, open_low=True), default=None,
                     help="choose the head by non-zeros per class (default: by validation accuracy)")
    sel.add_argument("--lam", type=_float_in(0.0, 1e3, open_low=True), default=None,
                     help="the paper's selection: one fixed lambda (LF-CBM's default is 7e-4)")
    sel.add_argument("--preset", default=None, choices=["imagenet", "places365", "cub", "cifar10", "cifar100", "default"],
                     help="the paper's selection: LF-CBM's fixed lambda for this dataset")
    _scorer_args(t)
    _common(t)
    t.set_defaults(func=cmd_train)


def _explain_parser(sub) -> None:
    e = sub.add_parser("explain", formatter_class=_Formatter,
                       help="explain images with a saved SALF-CBM and write an HTML report",
                       description="Explain images with a saved SALF-CBM: a model directory, a `salfcbm train` "
                                   "run's model/ folder, a `salfcbm demo` run folder, or a Hub repo id.")
    e.add_argument("--model", required=True, help="model directory, demo run directory, or Hub repo id")
    e.add_argument("images", nargs="+", type=_in_file, help="image files")
    e.add_argument("--backbone", default=None,
                   help="rebuild the backbone from this name instead of the saved spec (for a custom backbone)")
    e.add_argument("--backbone-weights", default=None,
                   help="with --backbone: 'default', a tag, a local file or 'none' (default: the saved spec's)")
    e.add_argument("--top-k", type=_int_in(1, 10**4), default=5, help="concepts shown per image")
    e.add_argument("--out", type=_out_file, default="explanations.html", help="HTML report to write")
    e.add_argument("--no-verify-backbone", action="store_true",
                   help="load even if the backbone's weights differ from the fingerprint saved with the model")
    _common(e)
    e.set_defaults(func=cmd_explain)


def cmd_app(args) -> int:
    from salfcbm.app import launch

    _set_threads(args)
    launch(args.model, images=args.images, host=args.host, port=args.port, share=args.share, top_k=args.top_k,
           quiet=args.quiet)
    return 0


def _app_parser(sub) -> None:
    a = sub.add_parser("app", formatter_class=_Formatter,
                       help="explore a saved SALF-CBM in the browser (pip install 'salfcbm[app]')",
                       description="Start the explorer, a local web app: predict and explain, explain anything "
                                   "(draw a region), intervene with a brush, decision rules, concept search.")
    a.add_argument("model", help="model directory, demo run directory (or its model/ folder), or Hub repo id")
    a.add_argument("--images", type=_in_dir, default=None,
                   help="folder of images for Concept search (a demo run brings its test scenes)")
    a.add_argument("--host", default="127.0.0.1", help="interface to serve on (127.0.0.1: this machine only)")
    a.add_argument("--port", type=_int_in(1, 65535), default=None, help="port (default: the first free one from 7860)")
    a.add_argument("--share", action="store_true", help="ask Gradio for a public link (contacts Gradio's servers)")
    a.add_argument("--top-k", type=_int_in(1, 10**4), default=5, help="concepts shown per class or region")
    _common(a)
    a.set_defaults(func=cmd_app)


def _push_parser(sub) -> None:
    u = sub.add_parser("push", formatter_class=_Formatter,
                       help="upload a saved SALF-CBM adapter to the Hugging Face Hub",
                       description="Upload config.json, model.safetensors, the model card and (when saved) "
                                   "backbone.safetensors of a saved SALF-CBM to the Hub, as they are: the backbone "
                                   "is neither rebuilt nor downloaded.")
    u.add_argument("--model", required=True, help="model directory (or a demo run directory)")
    u.add_argument("--repo-id", type=_repo_id, required=True, help="Hub repo id, e.g. user/salf-resnet50")
    u.add_argument("--private", action="store_true", help="create the repo as private")
    u.add_argument("--message", default="Upload SALF-CBM adapter", help="commit message")
    _common(u, threads=None)
    u.set_defaults(func=cmd_push)


def build_parser() -> argparse.ArgumentParser:
    """The ``salfcbm`` argument parser (also the source of ``docs/api/cli.md``)."""
    from salfcbm import __version__

    p = _Parser(prog="salfcbm", formatter_class=_Formatter,
                description="Spatially-aware, label-free concept bottleneck models.")
    p.add_argument("--version", action="version", version=f"salfcbm {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _demo_parser(sub)
    s = sub.add_parser("similarities", formatter_class=_Formatter,
                       help="compute the prompted CLIP similarity store of an image folder",
                       description="Compute the prompted CLIP similarity store of an image folder (resumable; "
                                   "under torchrun the ranks split the shards).")
    s.add_argument("--data", type=_in_dir, required=True, help="image folder (class sub-folders)")
    s.add_argument("--out", type=_out_dir, required=True, help="store directory (resumable; torchrun-aware)")
    s.add_argument("--shard-size", type=_int_in(1, 10**7), default=1024,
                   help="images per shard file (the unit of resuming and of recomputation)")
    _scorer_args(s)
    _common(s)
    s.set_defaults(func=cmd_similarities)
    _train_parser(sub)
    _explain_parser(sub)
    _push_parser(sub)
    _app_parser(sub)
    from salfcbm.reproduce.cli import add_parser as add_reproduce

    add_reproduce(sub, formatter_class=_Formatter)
    return p


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def _user_errors() -> tuple[type[BaseException], ...]:
    from salfcbm.errors import SalfCBMError

    errors: list[type[BaseException]] = [SalfCBMError, FileNotFoundError, FileExistsError, NotADirectoryError,
                                         IsADirectoryError, PermissionError]
    try:
        from huggingface_hub.errors import (
            HFValidationError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            LocalTokenNotFoundError,
        )

        errors += [HFValidationError, HfHubHTTPError, LocalEntryNotFoundError, LocalTokenNotFoundError]
    except ImportError:  # pragma: no cover - older huggingface_hub
        pass
    return tuple(errors)


def _one_line(e: BaseException) -> str:
    """The error's message on one line (a DataLoader worker's error: its original last line)."""
    text = str(e)
    if "Original Traceback" in text:  # re-raised by a DataLoader worker: keep the original message
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if re.match(r"^[\w.]+(Error|Exception): ", last) else last
    return " ".join(text.split()) or type(e).__name__


def _given(parser: argparse.ArgumentParser, argv: list[str] | None, command: str) -> set[str]:
    """The destinations of the options given on the command line (not left at their defaults)."""
    sub = _subparsers(parser)[command]
    saved = [(a, a.default) for a in sub._actions]
    for a, _ in saved:
        a.default = argparse.SUPPRESS
    try:
        return set(vars(parser.parse_args(argv))) - {"command", "func"}
    finally:
        for a, default in saved:
            a.default = default


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _conflicts(args, given: set[str]) -> list[str]:
    """Flags that would be ignored or contradict each other: each an error naming the fix."""
    bad = []
    if getattr(args, "dense", False):
        for dest, flag in (("target_nec", "--target-nec"), ("lam", "--lam"), ("preset", "--preset"),
                           ("path_points", "--path-points")):
            if dest in given:
                bad.append(f"{flag} selects a point on the sparse head's path and --dense fits no path; drop {flag} "
                           "or --dense")
    if getattr(args, "no_filter", False) and "clip_cutoff" in given:
        bad.append("--clip-cutoff sets a concept filter and --no-filter turns the filters off; drop one of them")
    scorer = str(getattr(args, "scorer", "") or "")
    if "pretrained" in given and scorer.startswith(("local-dir:", "hf-hub:")):
        bad.append(f"--pretrained does not apply to the scorer {scorer!r} (its weights come from "
                   f"{scorer.split(':', 1)[0]}:); drop --pretrained, or name an open_clip model with --scorer")
    if getattr(args, "measure_throughput", False) and "throughput" in given:
        bad.append("--measure-throughput measures the throughput that --throughput states; pass one of them")
    if "dry_run_scorer" in given and not getattr(args, "dry_run", False):
        bad.append("--dry-run-scorer applies only with --dry-run; add --dry-run or drop --dry-run-scorer")
    return bad


_SIGNALS = {signal.SIGINT: ("interrupted", 130), signal.SIGTERM: ("terminated", 143)}


class _Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived while a command ran (a KeyboardInterrupt, so cleanup code treats it as one)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_RESUMABLE = ("demo", "similarities", "train", "reproduce")


def _stop_line(signum: int, command: str | None) -> str:
    word, _ = _SIGNALS.get(signum, ("interrupted", 130))
    line = f"salfcbm: {word} by {signal.Signals(signum).name}"
    if command in _RESUMABLE:
        line += "; finished steps are saved, and rerunning the same command resumes from them"
    return line


class _Signals:
    """SIGINT/SIGTERM: raise `_Stopped` while the command runs; once it has ended, print one line and exit."""

    def __init__(self):
        self.finished, self.previous, self.command, self.received = False, {}, None, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if not self.finished:
            self.finished, self.received = True, signum  # a second signal during cleanup ends the process at once
            raise _Stopped(signum)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - exiting anyway
                pass
        os.write(2, (_stop_line(signum, self.command) + "\n").encode())
        os._exit(_SIGNALS.get(signum, ("", 130))[1])

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The parsed command line, every value checked; conflicting flags raise `_BadUsage`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    bad = _conflicts(args, _given(parser, argv, args.command))
    if bad:
        raise _BadUsage(f"salfcbm {args.command}", "; ".join(bad))
    if args.command in ("similarities", "train") and args.device is None:
        args.device = "cuda" if _cuda() else "cpu"
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    A user error is one line on stderr, ``salfcbm: error: ...``, and exit code 2. SIGINT and
    SIGTERM end with one line and 130 / 143; a rerun of the same command resumes.
    """
    signals = _Signals().__enter__()

    def stopped(signum: int) -> int:
        signals.finished = True
        print(_stop_line(signum, signals.command), file=sys.stderr)
        return _SIGNALS[signum][1]

    try:
        try:
            args = _parse(argv)
            signals.command = args.command
            code = args.func(args)
        except _BadUsage as e:
            print(f"salfcbm: error: {_one_line(e)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as e:
            return stopped(e.signum if isinstance(e, _Stopped) else signal.SIGINT)
        except Exception as e:
            if signals.received is not None:  # the interrupt surfaced as another error (a DataLoader worker's)
                return stopped(signals.received)
            if not isinstance(e, _user_errors()) or os.environ.get("SALFCBM_DEBUG"):
                raise
            print(f"salfcbm: error: {_one_line(e)}", file=sys.stderr)
            return 2
        if signals.received is not None:  # the command caught the interrupt itself (a server that stopped)
            return stopped(signals.received)
        return code
    finally:
        signals.finished = True
        if argv is not None:  # called as a function: give the caller its handlers back
            signals.restore()


if __name__ == "__main__":
    sys.exit(main())
