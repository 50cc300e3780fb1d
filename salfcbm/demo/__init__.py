"""The offline demo world: procedural scenes with ground-truth concept masks, a ground-truth scorer
standing in for CLIP, a small CNN backbone, and the end-to-end ``salfcbm demo`` run.

Not loaded by ``import salfcbm``; import it explicitly (``from salfcbm.demo import SyntheticScenes``).
"""

from salfcbm.demo.run import DemoConfig, DemoResult, load_demo, run_demo
from salfcbm.demo.scenes import GroundTruthScorer, SmallConvNet, SyntheticScenes, pretrain_backbone

__all__ = [
    "DemoConfig",
    "DemoResult",
    "GroundTruthScorer",
    "SmallConvNet",
    "SyntheticScenes",
    "load_demo",
    "pretrain_backbone",
    "run_demo",
]
