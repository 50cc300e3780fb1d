"""The paper's numbers, and tables that put a run's numbers next to them with the difference.

All numbers are percentages, copied from the paper (Tables 1, 2 and 3). Figure 7 (appendix
B.1, ViT-B/16) is a bar chart without printed values, so its rows have no paper column.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from salfcbm.errors import InputError

__all__ = ["PAPER", "PAPER_CONCEPTS", "TABLE1_ROWS", "TABLE2_METHODS", "comparison_rows", "concept_rows",
           "format_concepts", "format_table"]

#: Table 1 rows: measured key -> label.
TABLE1_ROWS: dict[str, str] = {
    "salfcbm_sparse": "SALF-CBM, sparse",
    "standard_sparse": "Standard, sparse",
    "lf_cbm": "LF-CBM, sparse",
    "salfcbm_dense": "SALF-CBM, non-sparse",
    "standard_dense": "Standard, non-sparse",
}

#: The paper's numbers (%).
PAPER: dict[str, Any] = {
    "table1": {
        "imagenet": {"salfcbm_sparse": 75.32, "standard_sparse": 74.35, "lf_cbm": 71.95,
                     "salfcbm_dense": 76.26, "standard_dense": 76.13},
        "places365": {"salfcbm_sparse": 46.73, "standard_sparse": 38.46, "lf_cbm": 43.68,
                      "salfcbm_dense": 49.38, "standard_dense": 48.56},
        "cub": {"salfcbm_sparse": 74.35, "standard_sparse": 75.96, "lf_cbm": 74.31,
                "salfcbm_dense": 76.21, "standard_dense": 76.70},
    },
    "table2": {  # pixel accuracy, mIoU, mAP, in the paper's order (the labels are the methods' own)
        "lrp": (69.52, 36.85, 69.95), "integrated_gradients": (68.49, 46.59, 73.46),
        "gradcam": (71.34, 53.34, 83.88), "gradcam++": (71.31, 53.56, 83.93),
        "scorecam": (69.56, 51.44, 81.78), "fullgrad": (73.04, 55.78, 88.35), "salfcbm": (76.94, 58.30, 85.31),
    },
    "table3": {  # (grid, radius) -> sparse SALF-CBM accuracy
        "imagenet": {(5, 27): 74.17, (5, 32): 74.37, (5, 37): 75.01, (7, 27): 74.67, (7, 32): 75.32,
                     (7, 37): 75.31, (9, 27): 75.06, (9, 32): 75.22, (9, 37): 75.22},
        "cub": {(5, 27): 73.36, (5, 32): 73.59, (5, 37): 73.80, (7, 27): 73.42, (7, 32): 74.35,
                (7, 37): 74.01, (9, 27): 73.83, (9, 32): 74.12, (9, 37): 73.93},
    },
}


#: The concepts the paper's models keep (section 4.1: 4,741 of ImageNet's 4,751 LF-CBM concepts; Places365
#: and CUB: the whole LF-CBM set). Table 2's model keeps one concept per class.
PAPER_CONCEPTS: dict[str, int] = {"imagenet": 4741, "places365": 2544, "cub": 370}


def __getattr__(name: str) -> Any:
    """``TABLE2_METHODS``: Table 2's methods in the paper's order, measured key -> label, each label the
    method's own (`salfcbm.evaluation.methods.method_label`: a baseline class's ``label``)."""
    if name == "TABLE2_METHODS":
        return {key: _label(key) for key in PAPER["table2"]}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _label(method: str) -> str:
    from salfcbm.evaluation.methods import method_label

    return method_label(method)


def _num(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def comparison_rows(table: str, dataset: str, measured: Mapping[Any, Any]) -> list[dict[str, Any]]:
    """``[{"row", "measured", "paper", "difference"}]`` (percentages) for one of the paper's tables.

    Args:
        table: ``"table1"``, ``"table2"``, ``"table3"`` or ``"figure7"``.
        dataset: the dataset column.
        measured: table1/figure7: ``{row key: %}``; table2: ``{method: {"pixel_accuracy", "miou",
            "map"}}``; table3: ``{(grid, radius): %}``.

    Examples:
        >>> comparison_rows("table1", "cub", {"salfcbm_sparse": 74.0})[0]
        {'row': 'SALF-CBM, sparse', 'measured': 74.0, 'paper': 74.35, 'difference': -0.35}
    """
    rows: list[dict[str, Any]] = []

    def add(label: str, got: Any, paper: Any) -> None:
        got, paper = _num(got), _num(paper)
        diff = round(got - paper, 2) if got is not None and paper is not None else None
        rows.append({"row": label, "measured": got, "paper": paper, "difference": diff})

    if table in ("table1", "figure7"):
        paper = PAPER["table1"].get(dataset, {}) if table == "table1" else {}
        for key, label in TABLE1_ROWS.items():
            if key in measured or key in paper:
                add(label, measured.get(key), paper.get(key))
    elif table == "table2":
        for key in PAPER["table2"]:  # the paper's order
            got, label = measured.get(key, {}), _label(key)
            for i, metric in enumerate(("pixel_accuracy", "miou", "map")):
                add(f"{label} {('pixel acc.', 'mIoU', 'mAP')[i]}", got.get(metric), PAPER["table2"][key][i])
    elif table == "table3":
        paper = PAPER["table3"].get(dataset, {})
        for g, r in sorted(set(paper) | {tuple(k) for k in measured}):
            add(f"grid {g}x{g}, r = {r}", measured.get((g, r)), paper.get((g, r)))
    else:
        raise InputError(f"Unknown table {table!r}; expected table1, table2, table3 or figure7.")
    return rows


def format_table(table: str, dataset: str, measured: Mapping[Any, Any], title: str = "") -> str:
    """A markdown table of `comparison_rows`: measured, paper, difference (percentage points)."""
    def f(v: float | None, sign: bool = False) -> str:
        return "n/a" if v is None else (f"{v:+.2f}" if sign else f"{v:.2f}")

    lines = [f"### {title}", ""] if title else []
    lines += ["| | measured (%) | paper (%) | difference (pp) |", "|---|---|---|---|"]
    for r in comparison_rows(table, dataset, measured):
        lines.append(f"| {r['row']} | {f(r['measured'])} | {f(r['paper'])} | {f(r['difference'], True)} |")
    return "\n".join(lines) + "\n"


def concept_rows(dataset: str, runs: Mapping[str, Mapping[str, Any]], paper: int | None = None) -> list[dict[str, Any]]:
    """``[{"run", "initial", "inactive", "uninterpretable", "kept_for_head", "kept", "paper", "difference"}]``.

    ``runs`` maps a run name to its results (``{"concepts": {"initial", "inactive", "uninterpretable",
    "final"[, "kept_for_head"]}}``, as `salfcbm.reproduce.run_recipe` records them); runs without
    concept counts are skipped. ``paper`` defaults to `PAPER_CONCEPTS` of ``dataset``.

    Examples:
        >>> concept_rows("cub", {"r": {"concepts": {"initial": 370, "inactive": 2, "uninterpretable": 8, "final": 360}}})[0]["difference"]
        -10
    """
    want = PAPER_CONCEPTS.get(dataset) if paper is None else paper
    rows = []
    for name, res in runs.items():
        c = res.get("concepts") if isinstance(res, Mapping) else None
        if not isinstance(c, Mapping) or "final" not in c:
            continue
        final = int(c["final"])
        rows.append({"run": name, "initial": c.get("initial"), "inactive": c.get("inactive"),
                     "uninterpretable": c.get("uninterpretable"), "kept_for_head": len(c.get("kept_for_head", [])),
                     "kept": final, "paper": want, "difference": None if want is None else final - want})
    return rows


def format_concepts(dataset: str, runs: Mapping[str, Mapping[str, Any]], paper: int | None = None,
                    statistic: str = "") -> str:
    """A markdown table of `concept_rows`: the concepts each run keeps next to the paper's count."""
    rows = concept_rows(dataset, runs, paper)
    if not rows:
        return ""
    stat = f" ({statistic} statistic)" if statistic else ""
    lines = ["| run | concepts | never fire (activation cutoff) | uninterpretable (interpretability cutoff"
             f"{stat}) | kept for the head | kept | paper | difference |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def f(v: Any, sign: bool = False) -> str:
            return "n/a" if v is None else (f"{v:+,d}" if sign else f"{v:,d}")

        lines.append(f"| {r['run']} | {f(r['initial'])} | {f(r['inactive'])} | {f(r['uninterpretable'])} "
                     f"| {f(r['kept_for_head'])} | {f(r['kept'])} | {f(r['paper'])} | {f(r['difference'], True)} |")
    return "\n".join(lines) + "\n"
