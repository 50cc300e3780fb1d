"""Dataset readers: image folders, the paper's datasets in their shipped layouts, and ImageNet-segmentation."""

from salfcbm.datasets.folder import ImageFolderDataset
from salfcbm.datasets.imagenet_seg import ImagenetSegmentation
from salfcbm.datasets.paper import CUB200Dataset, ImageNetDataset, Places365Dataset, holdout_split

__all__ = ["CUB200Dataset", "ImageFolderDataset", "ImageNetDataset", "ImagenetSegmentation", "Places365Dataset",
           "holdout_split"]
