"""Built-in datasets, batching and batch augmentations.

`DATASETS` maps a config name to a loader returning `DataSplits` (train/val/test plus the
input shape and class count the models are built from). All data is made or shipped
locally: scikit-learn's bundled digits, MNIST-1D generated with `mnist1d.make_dataset`
(never its download path) and cached on disk, and a synthetic set for tests.
"""

from distill.data.augment import (
    AUGMENTATIONS,
    Augmentation,
    augmentation_problem,
    build_augmentation,
)
from distill.data.core import ArrayDataset, DataSplits, load_batch, split_indices, teacher_input
from distill.data.sources import DATASETS, load_dataset

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "ArrayDataset",
    "Augmentation",
    "DataSplits",
    "augmentation_problem",
    "build_augmentation",
    "load_batch",
    "load_dataset",
    "split_indices",
    "teacher_input",
]
