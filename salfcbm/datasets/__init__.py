"""Dataset readers: image folders and ImageNet-segmentation."""

from salfcbm.datasets.folder import ImageFolderDataset
from salfcbm.datasets.imagenet_seg import ImagenetSegmentation

__all__ = ["ImageFolderDataset", "ImagenetSegmentation"]
