"""`DemoConfig`: the sizes and settings of a demo run, the bottleneck's nested in a `BottleneckConfig`.

Examples:
    >>> DemoConfig(seed=3).bottleneck.seed, demo_bottleneck().max_steps
    (3, 1500)
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import InitVar, dataclass
from typing import Any

from salfcbm.errors import InputError
from salfcbm.training import BottleneckConfig

__all__ = ["DemoConfig", "demo_bottleneck", "FLAT_BOTTLENECK_KEYWORDS"]


def demo_bottleneck(seed: int = 0, **changes: Any) -> BottleneckConfig:
    """The demo's bottleneck settings (1,500 steps at most, 256 scenes a step, lr 5e-3, checked every 50
    steps with patience 8, cutoff 0.3), with ``changes`` applied.

    Examples:
        >>> demo_bottleneck(max_steps=300).max_steps, demo_bottleneck().lr
        (300, 0.005)
    """
    base = BottleneckConfig(max_steps=1500, batch_size=256, val_every=50, patience=8, lr=5e-3, cutoff=0.3, seed=seed)
    return dataclasses.replace(base, **changes)


#: The flat keywords of earlier releases and the `BottleneckConfig` field each one now sets.
FLAT_BOTTLENECK_KEYWORDS = {"bottleneck_steps": "max_steps", "bottleneck_lr": "lr", "cutoff": "cutoff"}


@dataclass
class DemoConfig:
    """Sizes of the demo run (the defaults take a few minutes on 2 CPU cores).

    ``bottleneck`` holds the bottleneck stage's settings (`salfcbm.training.BottleneckConfig`);
    ``None`` (the default) is `demo_bottleneck` with the demo's ``seed``. The flat keywords of
    earlier releases, ``bottleneck_steps``, ``bottleneck_lr`` and ``cutoff``, still set its
    ``max_steps``, ``lr`` and ``cutoff`` (with a ``DeprecationWarning`` naming the new spelling) and
    read back from it.

    Examples:
        >>> cfg = DemoConfig(n_train=600, bottleneck=demo_bottleneck(max_steps=300))
        >>> cfg.bottleneck.max_steps, cfg.bottleneck.seed, cfg.bottleneck_steps
        (300, 0, 300)
    """

    n_train: int = 3000
    n_val: int = 600
    n_test: int = 600
    image_size: int = 64
    num_classes: int = 8
    backbone_epochs: int = 12
    backbone_width: int = 16
    grid: int = 7
    radius: int = 32  # PromptGrid's unit: pixels of a 224 px image (the paper's r = 32), 9 px on a 64 px scene
    seed: int = 0
    report_images: int = 6
    bottleneck: BottleneckConfig | None = None
    bottleneck_steps: InitVar[int | None] = None
    bottleneck_lr: InitVar[float | None] = None
    cutoff: InitVar[float | None] = None

    def __post_init__(self, bottleneck_steps: int | None, bottleneck_lr: float | None, cutoff: float | None):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name != "bottleneck" and (not isinstance(v, int) or isinstance(v, bool)
                                           or v < (0 if f.name == "seed" else 1)):
                raise InputError(f"DemoConfig.{f.name} must be a positive int, got {v!r}.")
        flat = {k: v for k, v in (("bottleneck_steps", bottleneck_steps), ("bottleneck_lr", bottleneck_lr),
                                  ("cutoff", cutoff)) if v is not None}
        self.bottleneck = _nested_bottleneck(self.bottleneck, flat, self.seed)

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-able data (``demo_config.json``), the bottleneck's nested."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DemoConfig:
        """Settings read back from `to_dict` (or a ``demo_config.json`` of an earlier release, flat keys included)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return cls(**data)


def _flat_property(field_name: str) -> property:
    return property(lambda self: getattr(self.bottleneck, field_name),
                    doc=f"``bottleneck.{field_name}`` (the flat name of earlier releases; read only).")


for _flat, _field in FLAT_BOTTLENECK_KEYWORDS.items():  # read back the flat names from the nested config
    setattr(DemoConfig, _flat, _flat_property(_field))
del _flat, _field


def _nested_bottleneck(given: Any, flat: dict[str, Any], seed: int) -> BottleneckConfig:
    """``DemoConfig.bottleneck`` from its argument (a config, its dict or None) and the flat keywords."""
    if isinstance(given, dict):
        try:
            given = BottleneckConfig(**given)
        except TypeError as e:
            raise InputError(f"DemoConfig.bottleneck got {sorted(given)}: {e}. Pass a salfcbm.training."
                             "BottleneckConfig or a dict of its fields.") from None
    if given is not None and not isinstance(given, BottleneckConfig):
        raise InputError(f"DemoConfig.bottleneck must be a salfcbm.training.BottleneckConfig (or None for the demo's "
                         f"settings), got {type(given).__name__}.")
    if not flat:
        return given if given is not None else demo_bottleneck(seed)
    new = ", ".join(f"{FLAT_BOTTLENECK_KEYWORDS[k]}={v!r}" for k, v in flat.items())
    if given is not None:
        raise InputError(f"DemoConfig got both bottleneck= and the flat keywords {sorted(flat)}; put them in the "
                         f"bottleneck: bottleneck=demo_bottleneck({new}).")
    for k, v in flat.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (k != "bottleneck_steps" and not 0 <= v <= 1):
            raise InputError(f"DemoConfig.{k} must be {'a positive int' if k == 'bottleneck_steps' else 'a number in [0, 1]'}"
                             f", got {v!r}.")
    warnings.warn(f"DemoConfig({', '.join(f'{k}={v!r}' for k, v in flat.items())}) is now written "
                  f"DemoConfig(bottleneck=demo_bottleneck({new})) (salfcbm.demo.demo_bottleneck: the demo's "
                  "BottleneckConfig).", DeprecationWarning, stacklevel=4)
    return demo_bottleneck(seed, **{FLAT_BOTTLENECK_KEYWORDS[k]: v for k, v in flat.items()})
