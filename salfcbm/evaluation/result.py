"""What an attribution benchmark measured: `BenchmarkResult` (rows per method, protocol settings, example
heatmaps) with its Markdown and JSON forms, and the table's columns.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any


__all__ = ["FIELD_METRIC_COLUMNS", "METRIC_COLUMNS", "BenchmarkResult"]

#: Keys of every method's row in `BenchmarkResult.rows`, in table order.
METRIC_COLUMNS: tuple[str, ...] = (
    "pixel_accuracy",
    "miou",
    "map",
    "deletion_auc",
    "insertion_auc",
    "seconds_per_image",
    "speed_ratio",
)

#: The field's localisation and confidence metrics in every row (``*_relu``: on the rectified map).
FIELD_METRIC_COLUMNS: tuple[str, ...] = (
    "pointing_game",
    "relevance_mass",
    "relevance_mass_relu",
    "relevance_rank",
    "top_k_intersection",
    "average_drop",
    "increase_in_confidence",
    "faithfulness_correlation",
)



@dataclass
class BenchmarkResult:
    """What `run_attribution_benchmark` measured.

    Attributes:
        rows: per method, ``pixel_accuracy``, ``miou``, ``map`` (segmentation, fractions),
            ``deletion_auc`` (lower is better), ``insertion_auc`` (higher is better),
            ``seconds_per_image`` (wall), ``cpu_seconds_per_image``, ``speed_ratio``
            (÷ the reference method's, on ``meta["speed_clock"]``),
            ``explains``, ``n_images``; or ``error`` for a method that failed with
            ``on_error="record"``.
        meta: the protocol settings (targets, steps, batch sizes, device, ...).
        examples: the first images, their masks and every method's heatmaps
            (``{"images": ..., "masks": ..., "heatmaps": {name: (n, 1, h, w)}}``), for
            `plot_attribution_examples`; not part of `to_dict`.
        forward: optional forward-pass timing (see `forward_speed`).
    """

    rows: dict[str, dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)
    examples: dict[str, Any] = field(default_factory=dict)
    forward: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (rows, meta, forward)."""
        return {"meta": dict(self.meta), "methods": {k: dict(v) for k, v in self.rows.items()}, "forward": self.forward}

    def to_markdown(self) -> str:
        """The results table (and the forward-pass ratio) as Markdown."""
        ref = self.meta.get("reference", "salfcbm")
        clock = " (CPU time)" if self.meta.get("speed_clock") == "cpu" else ""
        head = (
            "| method | explains | pixel acc. ↑ | mIoU ↑ | mAP ↑ | deletion AUC ↓ | insertion AUC ↑ "
            f"| s / image | × {ref}{clock} |"
        )
        lines = [head, "|" + "---|" * 9]

        def num(r: dict[str, Any], k: str, fmt: str, scale: float = 1.0) -> str:
            v = r.get(k)
            return "–" if v is None else format(scale * v, fmt)

        for name, r in self.rows.items():
            if "error" in r:
                lines.append(f"| {name} | {r.get('explains', '')} | n/a: {r['error'][:80]} |" + " |" * 6)
                continue
            lines.append(
                f"| {name} | {r.get('explains', '')} | {num(r, 'pixel_accuracy', '.1f', 100)} "
                f"| {num(r, 'miou', '.1f', 100)} | {num(r, 'map', '.1f', 100)} "
                f"| {num(r, 'deletion_auc', '.3f')} | {num(r, 'insertion_auc', '.3f')} "
                f"| {num(r, 'seconds_per_image', '.2e')} | {num(r, 'speed_ratio', '.2f')} |"
            )
        lines += self._field_markdown()
        if self.forward:
            f = self.forward
            lines += [
                "",
                (
                    f"Forward pass, batch {f['batch_size']}: wrapped SALF-CBM {f['wrapped_seconds']:.2e} s, "
                    f"bare backbone {f['bare_seconds']:.2e} s (wall); ratio **{f['ratio']:.2f}×**"
                    + (" (CPU time)." if f.get("clock") == "cpu" else ".")
                ),
            ]
        ex = self.meta.get("explanation_masks")
        if ex and ex.get("shown"):
            def pct(v: float | None) -> str:
                return "–" if v is None else f"{100 * v:.1f} %"

            lines += [
                "",
                (
                    f"SALF-CBM's top-{ex['top_k']} concepts on {ex['images']} images: {pct(ex['shown_mask_empty'])} "
                    f"have an empty ground-truth mask (top-1: {ex['top1_mask_empty']} images); "
                    f"{pct(ex['present']['mask_empty'])} of those shown as present, "
                    f"{pct(ex['absent']['mask_empty'])} of those shown as absent."
                ),
            ]
        if self.meta.get("interventions"):  # optional: intervention_curve(...).to_dict() on the same data
            from salfcbm.evaluation.interventions import intervention_markdown

            lines += ["", intervention_markdown(self.meta["interventions"]).rstrip("\n")]
        return "\n".join(lines) + "\n"

    def _field_markdown(self) -> list[str]:
        """The field's localisation / confidence metrics, signed map next to rectified map."""
        rows = {n: r for n, r in self.rows.items() if "error" not in r and "pointing_game" in r}
        if not rows:
            return []

        def f(r: dict[str, Any], k: str, scale: float = 1.0) -> str:
            v = r.get(k)
            return "–" if v is None else f"{scale * v:.3f}" if scale == 1.0 else f"{scale * v:.1f}"

        lines = [
            "",
            "Localisation (signed map as given / rectified `max(h, 0)`) and confidence:",
            "",
            "| method | pointing game ↑ | relevance mass ↑ | mass ∉ [0, 1] % | relevance rank ↑ | top-k ∩ ↑ "
            "| avg. drop % ↓ | incr. conf. % ↑ | faithfulness corr. ↑ |",
            "|" + "---|" * 9,
        ]
        for name, r in rows.items():
            lines.append(
                f"| {name} | {f(r, 'pointing_game')} / {f(r, 'pointing_game_relu')} "
                f"| {f(r, 'relevance_mass')} / {f(r, 'relevance_mass_relu')} "
                f"| {f(r, 'relevance_mass_out_of_range', 100)} "
                f"| {f(r, 'relevance_rank')} / {f(r, 'relevance_rank_relu')} "
                f"| {f(r, 'top_k_intersection')} / {f(r, 'top_k_intersection_relu')} "
                f"| {f(r, 'average_drop', 100)} | {f(r, 'increase_in_confidence', 100)} "
                f"| {f(r, 'faithfulness_correlation')} |"
            )
        return lines

    def save(self, json_path: str | os.PathLike, markdown_path: str | os.PathLike | None = None) -> None:
        """Write `to_dict` as JSON (and `to_markdown`), atomically."""
        import json

        from salfcbm._utils.io import atomic_write_text

        atomic_write_text(json_path, json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        if markdown_path is not None:
            atomic_write_text(markdown_path, self.to_markdown())

