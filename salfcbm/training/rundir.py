"""The run directory of `fit`: artefact paths, stage keys (a stage is skipped when its key
matches the saved one), the saved bottleneck, ``metrics.json`` and stage timings."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from salfcbm._utils.io import atomic_write_bytes, checked_safetensors, read_checked_metadata
from salfcbm.core.model import SALFCBM
from salfcbm.errors import AllConceptsCutError
from salfcbm.training import diagnostics
from salfcbm.training.config import BottleneckReport

__all__ = ["RunDir", "write_json", "stage_key", "content_key", "record_all_cut", "timed"]

logger = logging.getLogger("salfcbm")


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, json.dumps(obj, indent=2, default=str).encode())


def stage_key(obj: Any) -> str:
    """A short digest of a stage's settings and inputs (JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def content_key(features: Any) -> str:
    """What a stage read: a store's content digest (changes with any recomputed shard), else its settings."""
    digest = getattr(features, "content_digest", None)
    return digest() if callable(digest) else stage_key(features.meta)


def record_all_cut(run: Path, error: AllConceptsCutError, cutoff: float) -> None:
    """Every concept was cut: say so in the log and in ``metrics.json`` before the error propagates."""
    finding = {"kind": diagnostics.ALL_CONCEPTS_CUT, "cutoff": cutoff, "concept_similarity": error.similarities,
               "message": str(error)}
    logger.error("Degenerate result (%s): %s", finding["kind"], finding["message"])
    write_json(run / "metrics.json", {"status": "failed", "degenerate": [finding]})


class RunDir:
    """The run directory: artefact paths, stage keys, resumable stage records and ``metrics.json``."""

    def __init__(self, run_dir: str | os.PathLike | None):
        import tempfile

        if run_dir is None:
            run_dir = tempfile.mkdtemp(prefix="salfcbm-run-")
        self.path = Path(run_dir)
        self.path.mkdir(parents=True, exist_ok=True)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def load_bottleneck(self, model: SALFCBM, key: str) -> BottleneckReport | None:
        """The saved bottleneck (loaded into ``model``) and its report when its stage key matches, else ``None``."""
        bfile, bjson = self / "bottleneck.safetensors", self / "bottleneck.json"
        meta = read_checked_metadata(bfile) if bfile.exists() and bjson.exists() else None
        if meta is None or meta.get("salfcbm.key") != key:
            return None
        saved = json.loads(bjson.read_text())
        if saved.get("key") != key:
            return None
        from safetensors.torch import load_file

        model.bottleneck.load_state_dict(load_file(bfile))
        r = saved["report"]
        report = BottleneckReport(**{**r, "dropped": [tuple(d) for d in r["dropped"]]})
        logger.info("Resumed the bottleneck stage from %s", bfile)
        return report

    def save_bottleneck(self, model: SALFCBM, key: str, report: BottleneckReport) -> None:
        """Save the trained bottleneck and its report under the stage key."""
        state = {k: v.detach().cpu().contiguous() for k, v in model.bottleneck.state_dict().items()}
        write_json(self / "bottleneck.json", {"key": key, "report": asdict(report)})
        atomic_write_bytes(self / "bottleneck.safetensors", checked_safetensors(state, {"salfcbm.key": key}))

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        """Write ``metrics.json``."""
        write_json(self / "metrics.json", metrics)


@contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Record the wall time of the block under ``timings[name]`` (not when it raises)."""
    t = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t
