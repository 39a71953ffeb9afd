"""The datasets the paper uses, and the facts about them that the code needs.

Sizes are for orientation only: the real size always comes from the file list, and a
mismatch with the expected size is a warning, not an error (a coreset is smaller).
"""
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    train_size: Optional[int]  # expected lines in the full training file list
    val_size: Optional[int]  # expected lines in the validation file list
    # True when validation is ImageNet-1K val through mapping_dict.txt (21K raw).
    val_is_1k_via_mapping: bool = False


DATASETS = {
    d.name: d
    for d in [
        DatasetInfo("ImageNet-1K", 1000, 1_281_167, 50_000),
        DatasetInfo("ImageNet-21K_Fall11", 21842, None, 50_000, val_is_1k_via_mapping=True),
        DatasetInfo("ImageNet-21K_Winter21", 19168, None, 50_000, val_is_1k_via_mapping=True),
        DatasetInfo("ImageNet-21K-Processed_Fall11", 11221, None, 561_050),
        DatasetInfo("ImageNet-21K-Processed_Winter21", 10450, None, 522_500),
    ]
}

CUSTOM = "custom"


def dataset_info(name: str) -> Optional[DatasetInfo]:
    """The table entry, None for 'custom'; an unknown name is an error listing the known ones."""
    if name == CUSTOM:
        return None
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join([*DATASETS, CUSTOM])
        raise ValueError(f"DATA.DATASET: unknown dataset {name!r}; known: {known}") from None
