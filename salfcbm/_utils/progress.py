"""Progress bars that end honestly: closed at the step they reached, with the reason they stopped."""

from __future__ import annotations

from typing import Any

__all__ = ["close_bar"]


def close_bar(bar: Any, done: int, reason: str) -> None:
    """Close a tqdm bar at ``done`` steps with the reason it stopped (no bar left hanging at 15 %)."""
    if getattr(bar, "disable", False):
        bar.close()
        return
    bar.total = done
    bar.n = done
    bar.set_postfix_str(reason, refresh=False)
    bar.refresh()
    bar.close()
