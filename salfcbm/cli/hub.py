"""``salfcbm push``: upload a saved SALF-CBM adapter to the Hugging Face Hub, as it is."""

from __future__ import annotations

from pathlib import Path

from salfcbm.cli.args import Formatter, add_common, repo_id
from salfcbm.cli.models import model_source

__all__ = ["ADAPTER_FILES", "add_parser", "check_adapter", "cmd_push"]

#: The files of a saved adapter that ``push`` uploads.
ADAPTER_FILES = ("config.json", "model.safetensors", "README.md", "backbone.safetensors")


def add_parser(sub) -> None:
    """Add ``salfcbm push`` to the sub-parsers ``sub``."""
    u = sub.add_parser("push", formatter_class=Formatter,
                       help="upload a saved SALF-CBM adapter to the Hugging Face Hub",
                       description="Upload config.json, model.safetensors, the model card and (when saved) "
                                   "backbone.safetensors of a saved SALF-CBM to the Hub, as they are: the backbone "
                                   "is neither rebuilt nor downloaded.")
    u.add_argument("--model", required=True, help="model directory (or a demo run directory)")
    u.add_argument("--repo-id", type=repo_id, required=True, help="Hub repo id, e.g. user/salf-resnet50")
    u.add_argument("--private", action="store_true", help="create the repo as private")
    u.add_argument("--message", default="Upload SALF-CBM adapter", help="commit message")
    add_common(u, threads=None)
    u.set_defaults(func=cmd_push)


def check_adapter(folder: Path) -> None:
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

    kind, path = model_source(args.model)
    if kind == "hub":
        raise FileNotFoundError(f"push needs a local model directory; {args.model!r} is not one.")
    folder = path / "model" if kind == "demo" else path
    check_adapter(folder)
    from salfcbm._utils.hub import hub_call

    api = HfApi()
    hub_call("salfcbm push", api.create_repo, args.repo_id, private=args.private, exist_ok=True, repo_type="model")
    info = hub_call("salfcbm push", api.upload_folder, repo_id=args.repo_id, folder_path=str(folder),
                    allow_patterns=list(ADAPTER_FILES), commit_message=args.message, repo_type="model")
    print(getattr(info, "commit_url", None) or info)
    return 0
