"""The user's own data on disk: image folders, image lists, tables and Hugging Face datasets.

Every loader here returns `LazyData`: a train and a test `LazySplit` (see
`distill.data.records`) that read samples on access, so the data may be far larger than
memory. Decoding is Pillow's, file formats are Arrow's through Hugging Face `datasets`
(CSV, Parquet, JSON/JSONL, Arrow, `save_to_disk` folders, `imagefolder`): distill writes
no decoder of its own.

| `data.name`    | what it reads                                                    |
| -------------- | ---------------------------------------------------------------- |
| `image_folder` | `train/<class>/*.png` (the ImageNet layout), optional `test` dir |
| `image_csv`    | a CSV of image paths and labels                                  |
| `table`        | CSV / Parquet / JSON rows: named feature columns and a label     |
| `hf`           | any local Hugging Face dataset, map-style or `streaming: true`   |

The code is in `distill.data.lazy` (what every source shares), `distill.data.images` and
`distill.data.tables`; this module gathers their names.

Labels that are strings are mapped to 0..C-1 in sorted order, and the mapping is printed
and kept (`DataSplits.class_names`). Without a test set, one is carved out of train,
stratified, with `test_fraction`.
"""

from __future__ import annotations

from distill.data.images import (  # noqa: F401
    IMAGE_EXTENSIONS,
    PIL_MODES,
    ImageFiles,
    _check_mode,
    _check_sizes,
    _image_files,
    _scan_folder,
    load_image_csv,
    load_image_folder,
)
from distill.data.lazy import (  # noqa: F401
    LabelCoder,
    LazyData,
    _announce,
    _as_int,
    _carve_test,
    _finish,
    _is_image,
    _is_text,
    _no_other_options,
    _num_classes,
    _range_of,
    _transforms,
    encode_labels,
    text_pipeline,
)
from distill.data.tables import (  # noqa: F401
    LABEL_COLUMNS,
    TableRows,
    _ClassLabels,
    _column,
    _feature_columns,
    _file_format,
    _labels_of,
    _require_datasets,
    find_label_column,
    hf_cache_dir,
    load_table,
    read_table,
)
