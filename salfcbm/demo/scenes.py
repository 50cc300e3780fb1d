"""The demo world's stand-ins in one import: scenes with ground-truth masks, a scorer that reads
them, and a small CNN backbone.

salfcbm cannot download CLIP, ImageNet or a pretrained backbone in its tests and examples,
so it ships three stand-ins that exercise the whole pipeline offline:

* `SyntheticScenes` (`salfcbm.demo.dataset`) -- deterministic scenes of 2-3 coloured,
  textured shapes on a background, each with a ground-truth mask per concept; every class
  is a *composition* of concepts (the rules: `salfcbm.demo.world`; the drawing:
  `salfcbm.demo.render`).
* `GroundTruthScorer` (`salfcbm.demo.scorer`) -- a `ConceptScorer` that plays CLIP's role
  in paper section 3.2 by reading the masks; a stand-in for CLIP, *not* a model of it.
* `SmallConvNet` (`salfcbm.demo.backbone`, registered with timm as ``salfcbm_demo_convnet``)
  and `pretrain_backbone` (`salfcbm.demo.pretrain`) -- a small CNN trained on the scenes'
  labels, standing in for a pretrained backbone (paper 3.3).

Examples:
    >>> from salfcbm.demo.scenes import SyntheticScenes, GroundTruthScorer
    >>> from salfcbm.supervision.prompts import PromptGrid
    >>> ds = SyntheticScenes(n=16, seed=0)
    >>> image, label = ds[0]
    >>> emb = GroundTruthScorer(ds).embed(image[None], torch.tensor([0]), PromptGrid(radius=8))
    >>> emb.shape == (1, 7, 7, len(ds.concepts))
    True
"""

from __future__ import annotations

import torch  # noqa: F401 - the examples above use it

from salfcbm.demo.backbone import SmallConvNet
from salfcbm.demo.dataset import SceneSample, SyntheticScenes
from salfcbm.demo.pretrain import pretrain_backbone
from salfcbm.demo.scorer import GroundTruthScorer
from salfcbm.demo.world import BACKGROUNDS, COLOURS, GENERATOR_VERSION, MAX_CLASSES, SHAPES, TEXTURES

__all__ = [
    "SyntheticScenes",
    "SceneSample",
    "GroundTruthScorer",
    "SmallConvNet",
    "pretrain_backbone",
    "GENERATOR_VERSION",
    "MAX_CLASSES",
    "SHAPES",
    "COLOURS",
    "TEXTURES",
    "BACKGROUNDS",
]
