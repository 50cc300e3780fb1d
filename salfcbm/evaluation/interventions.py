"""Intervention curves: accuracy as a policy corrects ``k`` concepts per image (test-time interventions).

A concept bottleneck is judged by what its concepts let a person do: an expert who sees that the
model got a concept wrong sets it right, and the prediction should follow (Koh et al., "Concept
Bottleneck Models", ICML 2020, section 6; Shin et al., "A Closer Look at the Intervention Procedure
of Concept Bottleneck Models", ICML 2023, for the policies). `intervention_curve` does this for every
image of a dataset: a **policy** ranks the concepts of the image, the first ``k`` are set to their
**target**, the head runs again, and accuracy and the mean true-class probability are recorded for
every ``k`` in ``ks``. The area under each curve (normalised by the span of ``ks``) is one number per
policy.

**Targets** (`ConceptTargets`) are per image and concept, in the unit the head reads: the
standardised pooled activation ``c*_norm = (c* - mean) / std`` (see `salfcbm.explain.evidence`).

* From **annotations** (`targets_from_labels`, `targets_from_masks`): an intervention *corrects*
  the concept. If the model already gets it right (it is present, ``c*_norm > threshold`` of
  `presence_threshold`, exactly when it is labelled present), it keeps its activation: an expert
  leaves a right concept alone (``keep_agreeing=False`` overwrites it too). A wrong one is set to
  the mean ``c*_norm`` of the evaluated images labelled present (for a missed concept) or absent
  (for a false one): what the concept looks like to this model when it is there or not.
  ``quantiles=(0.05, 0.95)`` uses Koh et al.'s rule instead (the 5th / 95th percentile of the
  concept's ``c*_norm`` over the images). `targets_from_masks` also keeps each concept's mask, for
  region interventions.
* As **activations** (`targets_from_activations`): the values themselves, in ``c*_norm`` units.
* **Label-free** (`targets_from_similarities`): the CLIP targets that supervised the bottleneck.
  The prompted similarity maps ``P[n, m]`` (a `salfcbm.supervision.store.PromptedEmbeddingStore`) are
  mean-pooled over the grid and z-scored per concept over the images: the same standardisation the
  model applies to ``c*``, so a target is "as far above its mean as the scorer says".

Unknown entries (NaN) are never intervened on; a concept of the model that the targets do not name
is unknown for every image.

**Modes.**

* ``mode="map"`` (whole-map): ``c*_norm[m] := t[m]`` for every chosen concept, then the head. With
  mean pooling this is exactly setting every cell of the concept map to ``mean[m] + std[m] * t[m]``.
* ``mode="region"`` (the spatial case): the concept map is edited inside the annotated region only,
  with the local-intervention arithmetic of `salfcbm.explain.intervene`:
  ``c(x)[m] <- c(x)[m] + I * (v - c(x)[m])`` with ``v = mean[m] + std[m] * t[m]`` (the target in map
  units) and ``I`` the region's fractional coverage of each grid cell (`mask_to_grid`), i.e. a
  per-cell ``beta = v - c``. Cells outside the region keep their value; the maps are then pooled
  (the model's own pooling), standardised and classified again. The region of a concept annotated
  present is its mask; of a concept annotated absent (an empty mask) the whole map, since the
  annotation says it is nowhere. Needs targets with regions (`targets_from_masks`).

**Policies** rank the concepts of each image once, from the model's state before any intervention
(higher score first; ties by concept index; unknown targets last and skipped). None sees the targets.

* ``"random"``: a uniformly random order (seeded by ``seed``).
* ``"uncertainty"``: closest to the presence threshold first, ``-|c*_norm[m] - threshold[m]|``;
  the threshold is read through `presence_threshold`.
* ``"contribution"``: largest ``|W[y_hat, m] * c*_norm[m]|`` first (``y_hat``: the prediction).
* ``"gradient"``: largest ``|d log p(y_hat) / d c*_norm[m]|`` first (autograd through the head).
* a callable ``policy(state: PolicyState) -> Tensor (B, M)`` of scores, higher first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from salfcbm._utils.modes import preserved_modes
from salfcbm._utils.tensors import accuracy
from salfcbm.errors import InputError
from salfcbm.explain.evidence import PRESENCE_THRESHOLD

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from salfcbm.core.model import SALFCBM

__all__ = [
    "MODES",
    "POLICIES",
    "ConceptTargets",
    "InterventionCurves",
    "PolicyState",
    "intervention_curve",
    "presence_threshold",
    "targets_from_activations",
    "targets_from_labels",
    "targets_from_masks",
    "targets_from_similarities",
]

POLICIES = ("random", "uncertainty", "contribution", "gradient")
MODES = ("map", "region")


def presence_threshold(model: SALFCBM) -> torch.Tensor:
    """The ``(M,)`` presence threshold of each concept in ``c*_norm`` units, as the uncertainty policy reads it.

    Today every concept uses `salfcbm.explain.evidence.PRESENCE_THRESHOLD` (0: the training mean);
    this one function is the place to swap in per-concept calibrated thresholds.
    """
    return torch.full((model.num_concepts,), float(PRESENCE_THRESHOLD))


# --------------------------------------------------------------------------- targets
@dataclass
class ConceptTargets:
    """Per-image concept targets for `intervention_curve`.

    Attributes:
        labels: ``(N, K)`` presence in {0, 1}, NaN where unknown; or ``None`` when ``values`` is given.
        values: ``(N, K)`` target standardised activations ``c*_norm``, NaN where unknown; or ``None``.
        concepts: the names of the ``K`` columns (matched to ``model.concepts`` by name); ``None``: the
            columns are the model's concepts, in order.
        regions: ``(N, K, H, W)`` region of each target for ``mode="region"`` (bool or fractions in
            [0, 1], any resolution; resized to the grid by area averaging), or ``None``.
        source: where the targets come from (shown in reports).
    """

    labels: torch.Tensor | None = None
    values: torch.Tensor | None = None
    concepts: list[str] | None = None
    regions: torch.Tensor | None = None
    source: str = "user"

    def __post_init__(self) -> None:
        if (self.labels is None) == (self.values is None):
            raise InputError("ConceptTargets takes exactly one of `labels` (presence in {0, 1}) or `values` "
                             f"(standardised activations); got {'both' if self.labels is not None else 'neither'}.")
        t = self.table
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
            raise InputError(f"Concept targets must be an (N images, K concepts) tensor, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}.")
        if self.labels is not None:
            lab = self.labels[~torch.isnan(self.labels)]
            if not bool(((lab == 0) | (lab == 1)).all()):
                raise InputError("Concept labels must be 0 (absent), 1 (present) or NaN (unknown); got other values. "
                                 "Pass activations with targets_from_activations instead.")
        elif bool(torch.isinf(self.values).any()):
            raise InputError("Concept target values must be finite (NaN marks an unknown target); got inf.")
        if self.concepts is not None and len(self.concepts) != t.shape[1]:
            raise InputError(f"{len(self.concepts)} concept names for {t.shape[1]} target columns; pass one per column.")
        if self.regions is not None and (self.regions.dim() != 4 or tuple(self.regions.shape[:2]) != tuple(t.shape)):
            raise InputError(f"`regions` must be (N, K, H, W) with (N, K) = {tuple(t.shape)}, got "
                             f"{tuple(self.regions.shape)}.")
        if self.regions is not None and (not bool(torch.isfinite(self.regions.float()).all())
                                         or bool((self.regions.float() < 0).any())):
            raise InputError("`regions` must be masks (bool) or finite fractions >= 0 (a cell's share of the region).")

    @property
    def table(self) -> torch.Tensor:
        """The ``(N, K)`` labels or values."""
        return self.labels if self.labels is not None else self.values

    def __len__(self) -> int:
        return int(self.table.shape[0])


def targets_from_labels(labels: Any, concepts: Sequence[str] | None = None, *, source: str = "labels") -> ConceptTargets:
    """Targets from per-image concept labels ``(N, K)`` in {0, 1} (NaN: unknown); see the module docstring."""
    t = torch.as_tensor(labels).detach().cpu().float()
    return ConceptTargets(labels=t, concepts=list(concepts) if concepts is not None else None, source=source)


def targets_from_activations(values: Any, concepts: Sequence[str] | None = None, *,
                             source: str = "activations") -> ConceptTargets:
    """Targets given as standardised activations ``c*_norm`` ``(N, K)`` (NaN: unknown)."""
    t = torch.as_tensor(values).detach().cpu().float()
    return ConceptTargets(values=t, concepts=list(concepts) if concepts is not None else None, source=source)


def targets_from_masks(masks: Any, concepts: Sequence[str], *, source: str = "annotated masks") -> ConceptTargets:
    """Targets from ground-truth concept masks ``(N, K, H, W)``: present where the mask is not empty.

    The masks are kept as the regions of ``mode="region"``. For the demo's scenes:
    ``targets_from_masks(scenes.masks_batch(range(n)), scenes.concepts)``.
    """
    m = torch.as_tensor(masks).detach().cpu()
    if m.dim() != 4:
        raise InputError(f"`masks` must be (N, K, H, W), got shape {tuple(m.shape)}.")
    present = m.flatten(2).ne(0).any(-1).float()
    return ConceptTargets(labels=present, concepts=list(concepts), regions=m.float(), source=source)


def targets_from_similarities(similarities: Any, concepts: Sequence[str], indices: Any = None, *,
                              source: str = "CLIP similarities") -> ConceptTargets:
    """Label-free targets from the similarity maps that supervised the bottleneck (paper 3.2).

    Args:
        similarities: a `salfcbm.supervision.store.PromptedEmbeddingStore` of the evaluated images, or the
            similarity maps ``P`` as a tensor ``(N, K, Hg, Wg)`` (or pooled ``(N, K)``).
        concepts: the concept names (``model.concepts`` for the model's own concept set).
        indices: the images of the store to use (default: all, in order: one per evaluated image).

    Returns:
        `ConceptTargets` with ``values``: each concept's grid-mean similarity z-scored over the images.
    """
    concepts = list(concepts)
    if hasattr(similarities, "targets") and hasattr(similarities, "length"):
        idx = torch.arange(similarities.length) if indices is None else torch.as_tensor(indices)
        sims = torch.cat([similarities.targets(idx[a:a + 256], concepts) for a in range(0, len(idx), 256)])
    else:
        sims = torch.as_tensor(similarities).detach().float()
        if indices is not None:
            sims = sims[torch.as_tensor(indices)]
    sims = sims.cpu().float()
    if sims.dim() == 4:
        sims = sims.flatten(2).mean(-1)
    if sims.dim() != 2 or sims.shape[1] != len(concepts):
        raise InputError(f"The similarities must be (N, {len(concepts)}, Hg, Wg) or (N, {len(concepts)}) for "
                         f"{len(concepts)} concepts, got shape {tuple(sims.shape)}.")
    if sims.shape[0] < 2:
        raise InputError("Label-free targets z-score the similarities over the images; pass at least 2 images.")
    z = (sims - sims.mean(0)) / sims.std(0).clamp_min(1e-12)
    return ConceptTargets(values=z, concepts=concepts, source=source)


def _coerce_targets(targets: Any) -> ConceptTargets:
    if isinstance(targets, ConceptTargets):
        return targets
    if isinstance(targets, torch.Tensor) or hasattr(targets, "__array__"):
        t = torch.as_tensor(targets).detach().cpu()
        known = t[~torch.isnan(t.float())] if t.is_floating_point() else t
        if t.dtype == torch.bool or bool(((known == 0) | (known == 1)).all()):
            return targets_from_labels(t.float())
        return targets_from_activations(t.float())
    raise InputError(f"`concept_targets` must be ConceptTargets (targets_from_masks, targets_from_labels, "
                     f"targets_from_similarities) or an (N, M) tensor of labels or activations; got {type(targets).__name__}.")


def _align_targets(model: SALFCBM, targets: ConceptTargets) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """The targets as ``(N, M)`` columns of the model's concepts (NaN where unnamed), their regions and kind."""
    t = targets.table.float()
    n, m = t.shape[0], model.num_concepts
    if targets.concepts is None:
        if t.shape[1] != m:
            raise InputError(f"The targets have {t.shape[1]} columns but the model has {m} concepts; pass one "
                             "column per concept of model.concepts, or name the columns (concepts=...).")
        cols = list(range(m))
    else:
        cols = [targets.concepts.index(c) if c in targets.concepts else -1 for c in model.concepts]
        if all(c < 0 for c in cols):
            raise InputError(f"None of the model's concepts is among the targets' {len(targets.concepts)} concept names "
                             f"(e.g. {targets.concepts[:3]}); name the columns with the model's concepts.")
    from salfcbm.explain.regions import mask_to_grid

    out = torch.full((n, m), float("nan"))
    regions = None if targets.regions is None else torch.zeros((n, m, *model.grid))
    for j, c in enumerate(cols):
        if c >= 0:
            out[:, j] = t[:, c]
            if regions is not None:
                regions[:, j] = mask_to_grid(targets.regions[:, c].float(), model.grid)
    return out, regions, targets.labels is not None


# --------------------------------------------------------------------------- policies
@dataclass
class PolicyState:
    """What a policy sees of a batch of images before any intervention (never the targets).

    Attributes:
        normalized: ``(B, M)`` standardised activations ``c*_norm``.
        logits: ``(B, C)`` the head's logits.
        predictions: ``(B,)`` the predicted classes ``y_hat``.
        weight: ``(C, M)`` the head's weights ``W``.
        threshold: ``(M,)`` the presence threshold (`presence_threshold`).
        known: ``(B, M)`` which concepts have a target (the others are skipped whatever their score).
        indices: ``(B,)`` the images' positions in the dataset.
        generator: a seeded ``torch.Generator`` for random policies.
    """

    normalized: torch.Tensor
    logits: torch.Tensor
    predictions: torch.Tensor
    weight: torch.Tensor
    threshold: torch.Tensor
    known: torch.Tensor
    indices: torch.Tensor
    generator: torch.Generator


def _random(s: PolicyState) -> torch.Tensor:
    return torch.rand(s.normalized.shape, generator=s.generator)


def _uncertainty(s: PolicyState) -> torch.Tensor:
    return -(s.normalized - s.threshold).abs()


def _contribution(s: PolicyState) -> torch.Tensor:
    return (s.weight[s.predictions] * s.normalized).abs()


def _gradient(s: PolicyState, head: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    z = s.normalized.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logp = head(z).float().log_softmax(-1).gather(1, s.predictions[:, None]).sum()
        (g,) = torch.autograd.grad(logp, z)
    return g.abs()


def _resolve_policies(policy: Any) -> dict[str, Any]:
    items = [policy] if isinstance(policy, str) or callable(policy) else policy
    try:
        items = list(items)
    except TypeError:
        items = [policy]
    if not items:
        raise InputError(f"Pass at least one policy: one of {list(POLICIES)} or a callable.")
    out: dict[str, Any] = {}
    for p in items:
        if isinstance(p, str):
            if p not in POLICIES:
                raise InputError(f"Unknown intervention policy {p!r}; valid policies are {list(POLICIES)}, or pass a "
                                 "callable policy(state) -> (B, M) scores.")
            out[p] = p
        elif callable(p):
            out[getattr(p, "__name__", None) or type(p).__name__] = p
        else:
            raise InputError(f"A policy is one of {list(POLICIES)} or a callable policy(state) -> (B, M) scores; "
                             f"got {p!r}.")
    return out


def _scores(policy: Any, state: PolicyState, head: Callable) -> torch.Tensor:
    if policy == "random":
        return _random(state)
    if policy == "uncertainty":
        return _uncertainty(state)
    if policy == "contribution":
        return _contribution(state)
    if policy == "gradient":
        return _gradient(state, head)
    s = policy(state)
    shape = tuple(state.normalized.shape)
    if not isinstance(s, torch.Tensor) or tuple(s.shape) != shape:
        raise InputError(f"A policy callable must return a tensor of scores of shape (B, M) = {shape}; got "
                         f"{tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__}.")
    s = s.detach().float().cpu()
    if bool(torch.isnan(s).any()):
        raise InputError("A policy callable returned NaN scores; return finite scores (higher = intervene first).")
    return s


def _ranks(scores: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """``rank[b, m]``: the position of concept ``m`` in image ``b``'s order (unknown targets last)."""
    s = torch.where(known, scores.float(), torch.tensor(float("-inf")))
    order = torch.sort(-s, dim=1, stable=True).indices  # ties: by concept index
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(s.shape[1]).expand_as(order).contiguous())
    return ranks


# --------------------------------------------------------------------------- result
@dataclass
class InterventionCurves:
    """What `intervention_curve` measured.

    Attributes:
        ks: the numbers of corrected concepts per image.
        accuracy: per policy, the accuracy at each ``k``.
        true_class_probability: per policy, the mean softmax probability of the true class at each ``k``.
        auc: per policy, ``{"accuracy": ..., "true_class_probability": ...}``: the trapezoid area under
            the curve divided by ``max(ks) - min(ks)`` (the mean height; in [0, 1]).
        mode: ``"map"`` or ``"region"``.
        n_images: images evaluated.
        meta: targets' source, quantiles, seed, concepts with a target.
    """

    ks: list[int]
    accuracy: dict[str, list[float]]
    true_class_probability: dict[str, list[float]]
    auc: dict[str, dict[str, float]]
    mode: str
    n_images: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def policies(self) -> list[str]:
        return list(self.accuracy)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: ks, curves, areas, mode, images and meta."""
        return {"ks": list(self.ks), "accuracy": {k: list(v) for k, v in self.accuracy.items()},
                "true_class_probability": {k: list(v) for k, v in self.true_class_probability.items()},
                "auc": {k: dict(v) for k, v in self.auc.items()}, "mode": self.mode, "n_images": self.n_images,
                "meta": dict(self.meta)}

    def to_markdown(self) -> str:
        """One row per policy: the two areas and the accuracy at the first and last ``k``."""
        return intervention_markdown(self.to_dict())

    def plot(self, **kwargs: Any) -> Figure:
        """The curves as a matplotlib figure (`salfcbm.viz.plot_intervention_curves`)."""
        from salfcbm.viz.interventions import plot_intervention_curves

        return plot_intervention_curves(self.to_dict(), **kwargs)


def intervention_markdown(curves: dict[str, Any]) -> str:
    """`InterventionCurves.to_dict` as a Markdown table (used by the benchmark report)."""
    ks = curves["ks"]
    lines = [f"Intervention curves ({curves['mode']} mode, {curves['n_images']} images, targets: "
             f"{curves.get('meta', {}).get('targets', '?')}; k = {ks[0]}..{ks[-1]} concepts per image):", "",
             f"| policy | AUC accuracy ↑ | AUC true-class prob. ↑ | accuracy at k={ks[0]} | accuracy at k={ks[-1]} |",
             "|---|---|---|---|---|"]
    for name, acc in curves["accuracy"].items():
        a = curves["auc"][name]
        lines.append(f"| {name} | {a['accuracy']:.3f} | {a['true_class_probability']:.3f} | {acc[0]:.3f} "
                     f"| {acc[-1]:.3f} |")
    return "\n".join(lines) + "\n"


def _normalised_auc(ks: Sequence[int], ys: Sequence[float]) -> float:
    if len(ks) == 1:
        return float(ys[0])
    area = sum((ks[i + 1] - ks[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(ks) - 1))
    return float(area / (ks[-1] - ks[0]))


# --------------------------------------------------------------------------- the curve
def _check_ks(ks: Any, m: int) -> list[int]:
    if ks is None:
        step = max(1, math.ceil(m / 16))
        return sorted(set(range(0, m + 1, step)) | {m})
    vals = [ks] if isinstance(ks, int) else ks
    try:
        vals = list(vals)
    except TypeError:
        raise InputError(f"`ks` must be a list of ints in [0, {m}] (the model's concepts), got {ks!r}.") from None
    bad = [k for k in vals if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= m]
    if not vals or bad:
        raise InputError(f"`ks` must be a non-empty list of ints in [0, {m}] (0 to the model's {m} concepts); got "
                         f"{bad or vals!r}" + (" out of range." if bad else "."))
    return sorted(set(vals))


@torch.no_grad()
def _collect(model: SALFCBM, data: Any, batch_size: int, maps: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Pooled activations ``(N, M)``, labels ``(N,)`` and (for region mode) raw concept maps ``(N, M, Hg, Wg)``."""
    from salfcbm.core.images import align_dataset

    data = align_dataset(data, model.image_transform)
    norm = model.image_transform.normalize
    device = next(model.bottleneck.parameters()).device
    acts, labels, all_maps = [], [], []
    for batch in torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False):
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            raise InputError("`data` must yield (image, label) items, e.g. a SyntheticScenes or a TensorDataset.")
        with preserved_modes(model, mode=False):  # evaluated as deployed; the user's flags come back
            out = model(norm(batch[0].to(device)))
        acts.append(out.concept_activations.float().cpu())
        labels.append(torch.as_tensor(batch[1]).long().cpu())
        if maps:
            all_maps.append(out.concept_maps.float().cpu())
    return torch.cat(acts), torch.cat(labels), (torch.cat(all_maps) if maps else None)


def _edited_logits(model: SALFCBM, z: torch.Tensor, values: torch.Tensor, chosen: torch.Tensor,
                   maps: torch.Tensor | None, regions: torch.Tensor | None) -> torch.Tensor:
    """The head's logits after the chosen concepts are set to their targets (see the module docstring)."""
    p = next(model.head.parameters())
    mean, std = model.concept_mean.float().cpu(), model.concept_std.float().cpu()
    if maps is None:  # whole-map: c*_norm := t
        edited = torch.where(chosen, values, z)
    else:  # region: c <- c + I * (v - c) inside the region, then the model's pooling
        v = (mean + std * values)[..., None, None]
        weight = regions * chosen[..., None, None]
        new_maps = maps + weight * (torch.nan_to_num(v) - maps)
        act = model.pool(new_maps.to(p.device, p.dtype)).float().cpu()
        edited = (act - mean) / std
    return model.head(edited.to(p.device, p.dtype)).float().cpu()


def _target_values(z: torch.Tensor, table: torch.Tensor, is_labels: bool, quantiles: Sequence[float] | None,
                   threshold: torch.Tensor, keep_agreeing: bool) -> torch.Tensor:
    """Labels -> ``c*_norm`` values (see the module docstring); values pass through."""
    if not is_labels:
        return table
    nan = torch.tensor(float("nan"))
    if quantiles is not None:  # Koh et al.: the low / high quantile of each concept over the images
        lo, hi = torch.quantile(z, torch.tensor([float(quantiles[0]), float(quantiles[1])]), dim=0)
    else:  # the mean activation of the images annotated present / absent (the overall mean if none is)
        def cond_mean(sel: torch.Tensor) -> torch.Tensor:
            n = sel.sum(0)
            return torch.where(n > 0, (z * sel).sum(0) / n.clamp_min(1), z.mean(0))

        hi, lo = cond_mean((table == 1).float()), cond_mean((table == 0).float())
    out = torch.where(table == 1, hi.expand_as(table), lo.expand_as(table))
    if keep_agreeing:  # a concept the model already gets right (present <=> labelled present) keeps its value
        out = torch.where((z > threshold) == (table == 1), z, out)
    return torch.where(torch.isnan(table), nan, out)


def _check_options(mode: str, quantiles: Any, batch_size: Any, n: int, data: Any) -> None:
    if mode not in MODES:
        raise InputError(f"Unknown intervention mode {mode!r}; valid modes are {list(MODES)}.")
    if quantiles is not None and (not isinstance(quantiles, (tuple, list)) or len(quantiles) != 2
            or not all(isinstance(q, (int, float)) and 0 <= q <= 1 for q in quantiles) or quantiles[0] >= quantiles[1]):
        raise InputError(f"`quantiles` must be None or (low, high) with 0 <= low < high <= 1, got {quantiles!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"`batch_size` must be a positive int, got {batch_size!r}.")
    if not hasattr(data, "__len__") or len(data) != n:
        raise InputError(f"The concept targets have {n} rows but `data` has "
                         f"{len(data) if hasattr(data, '__len__') else 'no length (pass a dataset)'} items; "
                         "pass one target row per image, in the dataset's order.")


def intervention_curve(
    model: SALFCBM,
    data: Any,
    concept_targets: Any,
    *,
    policy: Any = POLICIES,
    ks: Sequence[int] | None = None,
    mode: str = "map",
    seed: int = 0,
    quantiles: Sequence[float] | None = None,
    keep_agreeing: bool = True,
    batch_size: int = 64,
) -> InterventionCurves:
    """Accuracy and true-class probability as ``k`` concepts per image are set to their targets.

    The definitions (targets, modes, policies) are in the module docstring and ``docs/evaluation.md``.
    The backbone runs once per image (in eval mode; the model's flags are restored); every ``k`` and
    policy re-runs only the pooling and the head. Region mode keeps every image's grid maps in memory
    (``4 * N * M * Hg * Wg`` bytes): evaluate a large dataset in parts.

    Args:
        model: a trained `SALFCBM` (evaluated as it is; nothing of it changes).
        data: ``(image, label)`` items with ``[0, 1]`` images, as `top_activating_images` takes them.
        concept_targets: `ConceptTargets` (`targets_from_masks`, `targets_from_labels`,
            `targets_from_activations`, `targets_from_similarities`), or an ``(N, M)`` tensor: labels
            in {0, 1} (or bool) or standardised activations, one column per ``model.concepts``.
        policy: a policy name (`POLICIES`), a callable ``policy(state: PolicyState) -> (B, M)`` scores
            (higher first), or a list of them (one curve each; a callable is named by its ``__name__``).
        ks: the numbers of corrected concepts, ints in ``[0, M]`` (default: up to 17 steps from 0 to M).
            An image with fewer known targets than ``k`` has all of them corrected.
        mode: ``"map"`` (set ``c*_norm``) or ``"region"`` (edit the concept map inside the annotated region).
        seed: seed of the random policy.
        quantiles: ``None`` (a wrong label is set to the mean ``c*_norm`` of the images with that label) or
            ``(low, high)``: the quantiles of the concept's ``c*_norm`` that absent / present labels are set to.
        keep_agreeing: with labels, a concept whose presence already agrees with its label keeps its value.
        batch_size: images per forward pass.

    Returns:
        `InterventionCurves`.

    Examples:
        >>> t = targets_from_masks(scenes.masks_batch(range(len(scenes))), scenes.concepts)  # doctest: +SKIP
        >>> curves = intervention_curve(model, scenes, t, policy=["random", "uncertainty"])  # doctest: +SKIP
        >>> curves.auc["uncertainty"]["accuracy"]  # doctest: +SKIP
    """
    targets = _coerce_targets(concept_targets)
    policies = _resolve_policies(policy)
    _check_options(mode, quantiles, batch_size, len(targets), data)
    ks = _check_ks(ks, model.num_concepts)
    table, regions, is_labels = _align_targets(model, targets)
    if mode == "region" and regions is None:
        raise InputError(f"mode='region' edits each concept inside its annotated region, but the targets "
                         f"({targets.source}) have no regions; build them with targets_from_masks, or use mode='map'.")
    act, labels, maps = _collect(model, data, batch_size, maps=(mode == "region"))
    mean, std = model.concept_mean.float().cpu(), model.concept_std.float().cpu()
    z = (act - mean) / std
    values = _target_values(z, table, is_labels, quantiles, presence_threshold(model), keep_agreeing)
    known = ~torch.isnan(values)
    if mode == "region":
        empty = regions.flatten(2).sum(-1) <= 0  # an absent concept: its region is the whole map
        regions = torch.where(empty[..., None, None], torch.ones_like(regions), regions)
    p = next(model.head.parameters())

    def head(x: torch.Tensor) -> torch.Tensor:
        return model.head(x.to(p.device, p.dtype)).float().cpu()

    with torch.no_grad():
        logits0 = head(z)
    state = PolicyState(normalized=z, logits=logits0, predictions=logits0.argmax(1),
                        weight=model.head.weight.detach().float().cpu(), threshold=presence_threshold(model),
                        known=known, indices=torch.arange(len(z)), generator=torch.Generator().manual_seed(seed))
    acc: dict[str, list[float]] = {}
    prob: dict[str, list[float]] = {}
    for name, pol in policies.items():
        ranks = _ranks(_scores(pol, state, head), known)
        acc[name], prob[name] = [], []
        for k in ks:
            with torch.no_grad():
                logits = _edited_logits(model, z, values, (ranks < k) & known, maps, regions)
            acc[name].append(accuracy(logits, labels))
            prob[name].append(float(logits.softmax(-1).gather(1, labels[:, None]).mean()))
    auc = {n: {"accuracy": _normalised_auc(ks, acc[n]), "true_class_probability": _normalised_auc(ks, prob[n])}
           for n in policies}
    meta = {"targets": targets.source, "label_values": (None if not is_labels else "conditional means" if quantiles is None
                                     else f"quantiles {list(quantiles)}"), "keep_agreeing": keep_agreeing, "seed": seed,
            "concepts_with_targets": int(known.any(0).sum()), "mean_known_per_image": float(known.sum(1).float().mean())}
    return InterventionCurves(ks=ks, accuracy=acc, true_class_probability=prob, auc=auc, mode=mode,
                              n_images=len(z), meta=meta)
