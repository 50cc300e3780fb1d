"""The shipped layouts of the paper's datasets (`LAYOUTS`), shown in errors and in the docs."""

from __future__ import annotations

from salfcbm.errors import DatasetNotFoundError

__all__ = ["LAYOUTS", "layout_error"]

#: The expected layout of each dataset, shown in errors and in the docs.
LAYOUTS: dict[str, str] = {
    "imagenet": (
        "ROOT/train/n01440764/n01440764_10026.JPEG ... (1,000 WordNet-id folders)\n"
        "ROOT/val/n01440764/ILSVRC2012_val_00000293.JPEG ... (the 50,000 validation images sorted "
        "into the same class folders, e.g. with the widely used valprep.sh)"
    ),
    "places365": (
        "ROOT/categories_places365.txt\nROOT/places365_train_standard.txt\nROOT/places365_val.txt\n"
        "ROOT/data_256/a/airfield/00000001.jpg ...\nROOT/val_256/Places365_val_00000001.jpg ...\n"
        "(torchvision.datasets.Places365(ROOT, small=True, download=True) writes exactly this; "
        "data_large/ and val_large/ with small=False)"
    ),
    "cub": (
        "ROOT/images.txt\nROOT/image_class_labels.txt\nROOT/train_test_split.txt\nROOT/classes.txt\n"
        "ROOT/images/001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg ...\n"
        "(ROOT is the CUB_200_2011 folder of CUB_200_2011.tgz, or the folder holding it)\n"
        "for concept_labels also ROOT/attributes/image_attribute_labels.txt and attributes.txt "
        "(next to ROOT as the archive ships it, or in ROOT or ROOT/attributes)"
    ),
    "imagenet-seg": "a single MATLAB v7.3 file gtsegs_ijcv.mat (value/img, value/gt)",
}


def layout_error(kind: str, what: str) -> DatasetNotFoundError:
    """A `DatasetNotFoundError` saying ``what`` is wrong and showing the expected ``kind`` layout."""
    return DatasetNotFoundError(f"{what}. Expected the {kind} layout:\n{LAYOUTS[kind]}")
