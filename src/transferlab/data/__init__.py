"""Data stage: index a folder tree or CSV, load images safely, split and subset reproducibly."""

from transferlab.data.dataset import ImageDataset, Problem, load_dataset
from transferlab.data.images import ImageLoadError, load_image
from transferlab.data.split import Split, make_split, stratified_subset

__all__ = [
    "ImageDataset",
    "ImageLoadError",
    "Problem",
    "Split",
    "load_dataset",
    "load_image",
    "make_split",
    "stratified_subset",
]
