"""Dataset readers: image folders, the paper's datasets in their shipped layouts, and ImageNet-segmentation."""

from salfcbm.datasets.folder import ImageFolderDataset
from salfcbm.datasets.imagenet_seg import ImagenetSegmentation
from salfcbm.datasets.paper import (
    ConceptLabels,
    CUB200Dataset,
    CUBAttributes,
    ImageNetDataset,
    Places365Dataset,
    holdout_split,
    match_cub_attributes,
    read_cub_attributes,
)

__all__ = ["CUB200Dataset", "CUBAttributes", "ConceptLabels", "ImageFolderDataset", "ImageNetDataset", "ImagenetSegmentation", "Places365Dataset",
           "holdout_split", "match_cub_attributes", "read_cub_attributes"]
