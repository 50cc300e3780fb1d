"""Evaluation metrics for heatmaps: zero-shot segmentation and deletion / insertion (one import path).

Two protocols, each in its own module, importable from here as before:

* `SegmentationMetrics` (`salfcbm.evaluation.segmentation`), the zero-shot segmentation protocol of
  Chefer et al. (CVPR 2021) that the SALF-CBM paper uses for its Table 2 (section 4.2);
* `deletion_insertion` / `DeletionInsertion` (`salfcbm.evaluation.deletion`), the causal deletion
  and insertion metrics of RISE (Petsiuk et al., BMVC 2018).

Both take heatmaps from any method (SALF-CBM concept maps, the baselines in
`salfcbm.evaluation.baselines`, or your own) as plain tensors.
"""

from salfcbm.evaluation.deletion import DeletionInsertion, blur_substrate, deletion_insertion, zeros_substrate
from salfcbm.evaluation.segmentation import SegmentationMetrics

__all__ = [
    "SegmentationMetrics",
    "DeletionInsertion",
    "deletion_insertion",
    "blur_substrate",
    "zeros_substrate",
]
