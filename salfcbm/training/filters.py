"""The concept-filter stage of `fit`: LF-CBM's filters on the model's concepts, with the
"never fires" test on the unprompted training images (resumable in the run directory)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from salfcbm.core.model import SALFCBM
from salfcbm.errors import InputError, SalfCBMError
from salfcbm.supervision.concepts import ConceptFilterReport, unprompted_activity
from salfcbm.supervision.concepts import filter_concepts as _filter
from salfcbm.supervision.store import PromptedEmbeddingStore
from salfcbm.training.rundir import stage_key, write_json

__all__ = ["filter_stage"]

logger = logging.getLogger("salfcbm")


def filter_stage(model: SALFCBM, train_data: Dataset, sims: PromptedEmbeddingStore, options: bool | dict[str, Any],
                 run: Path, *, batch_size: int, num_workers: int, progress: bool) -> ConceptFilterReport:
    """LF-CBM's concept filters on the model's concepts (resumable); the model keeps the survivors."""
    if not isinstance(options, (bool, dict)):
        raise InputError(f"filter_concepts must be True, False or a dict of filter_concepts options; got {options!r}.")
    opts = {} if options is True else dict(options)
    scorer = sims.scorer
    unprompted = callable(getattr(scorer, "embed_images", None))
    classes = model.config["class_names"] or []
    view, view_name = _unprompted_view(train_data, scorer) if unprompted else (train_data, "")
    key = stage_key({"concepts": model.concepts, "classes": classes, "opts": opts, "s": sims.store.meta,
                      "unprompted": unprompted, **({"view": view_name} if view is not train_data else {})})
    path = run / "concept_filter.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    if saved.get("key") == key:
        r = saved["report"]
        report = ConceptFilterReport(kept=r["kept"], dropped=[tuple(d) for d in r["dropped"]], settings=r["settings"])
    else:
        top_k = opts.get("top_k", 5)
        if unprompted:
            act = unprompted_activity(scorer, view, model.concepts, top_k=top_k, batch_size=batch_size,
                                      num_workers=num_workers, progress=progress)
        else:
            act = sims.concept_activity(model.concepts, top_k=top_k)
        report = _filter(model.concepts, classes=classes, scorer=scorer, activations=act, **opts)
        report.settings["activation_source"] = f"unprompted images (LF-CBM), {view_name}" if unprompted else \
            "best prompted cell (the scorer has no embed_images)"
        write_json(path, {"key": key, "report": report.to_dict()})
    if not report.kept:
        raise SalfCBMError(
            f"The concept filters removed every concept ({report}). Check the concept list against the class names "
            "and the data, relax the filter options, or pass filter_concepts=False."
        )
    if report.dropped:
        logger.info("Concept filters removed %d of %d concepts (%s); report in %s", len(report.dropped),
                    len(model.concepts), report.reasons, path)
        model.select_concepts(report.kept)
    return report


def _unprompted_view(data: Dataset, scorer: Any) -> tuple[Dataset, str]:
    """The training images for the unprompted activation test, cropped as the scorer's own preprocessing does.

    LF-CBM embeds them with CLIP's ``preprocess`` (shorter side to 224, centre crop), not
    with the backbone's crop. A dataset that can re-crop its files (``with_transform``) is
    given that geometry; any other keeps the model's view (recorded in the report).
    """
    size = getattr(scorer, "image_size", None)
    if size is None or not callable(getattr(data, "with_transform", None)) or \
            getattr(scorer, "resize_mode", "shortest") != "shortest":
        return data, "the model's crop (the dataset cannot re-crop its images)"
    from salfcbm.core.images import ImageTransform

    interp = getattr(scorer, "interpolation", "bicubic")
    t = ImageTransform(size=tuple(size), crop_pct=1.0, crop_mode="center", interpolation=interp)
    return data.with_transform(t), f"the scorer's own crop ({size[0]}x{size[1]}, {interp}, centre, whole shorter side)"

