"""data/val_labels.py: ImageNet-ReaL hits and the 21K->1K mapping_dict.txt."""
import json

import numpy as np
import pytest
import torch

from data.val_labels import RealLabels, load_mapping_dict, val_logit_columns
from utils.config import load_config

REAL = [[1], [2, 3], [], [0], [4, 0], []]


def real_file(tmp_path, labels=REAL):
    path = tmp_path / "real.json"
    path.write_text(json.dumps(labels))
    return str(path)


def hand_hits(labels, indices, top5):
    top1 = top5_hits = counted = 0
    for i, preds in zip(indices, top5):
        real = labels[i]
        if not real:
            continue
        counted += 1
        top1 += preds[0] in real
        top5_hits += any(p in real for p in preds)
    return top1, top5_hits, counted


def test_hits_match_hand_computation(tmp_path):
    real = RealLabels(real_file(tmp_path), 6, torch.device("cpu"))
    indices = torch.tensor([0, 1, 2, 3, 4, 5])
    top5 = torch.tensor([
        [1, 2, 3, 4, 5],  # 0: top-1 hit
        [3, 9, 8, 7, 6],  # 1: top-1 hit on the second of two labels
        [0, 1, 2, 3, 4],  # 2: no labels, not counted
        [5, 6, 7, 8, 0],  # 3: top-5 hit only
        [9, 8, 7, 6, 5],  # 4: miss (labels 4 and 0)
        [1, 1, 1, 1, 1],  # 5: not counted
    ])
    top1, top5_hits, counted = real.hits(indices, top5)
    assert (int(top1), int(top5_hits), int(counted)) == (2, 3, 4)
    assert (int(top1), int(top5_hits), int(counted)) == hand_hits(REAL, indices.tolist(), top5.tolist())


def test_hits_subset_in_any_order(tmp_path):
    real = RealLabels(real_file(tmp_path), 6, torch.device("cpu"))
    rng = np.random.default_rng(0)
    for _ in range(20):
        indices = rng.permutation(6)[: rng.integers(1, 7)]
        top5 = np.stack([rng.permutation(6)[:5] for _ in indices])
        got = tuple(int(x) for x in real.hits(torch.as_tensor(indices), torch.as_tensor(top5)))
        assert got == hand_hits(REAL, indices.tolist(), top5.tolist())


def test_hits_with_top_k_smaller_than_5(tmp_path):
    real = RealLabels(real_file(tmp_path), 6, torch.device("cpu"))
    top1, top5_hits, counted = real.hits(torch.tensor([1, 4]), torch.tensor([[2, 0], [1, 4]]))
    assert (int(top1), int(top5_hits), int(counted)) == (1, 2, 2)


def test_label_zero_is_a_label(tmp_path):
    # -1 pads the table; 0 must not be confused with padding
    real = RealLabels(real_file(tmp_path, [[0], [5]]), 2, torch.device("cpu"))
    top1, _, counted = real.hits(torch.tensor([0, 1]), torch.tensor([[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]))
    assert int(top1) == 1 and int(counted) == 2


def test_all_empty(tmp_path):
    real = RealLabels(real_file(tmp_path, [[], []]), 2, torch.device("cpu"))
    got = real.hits(torch.tensor([0, 1]), torch.tensor([[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]))
    assert tuple(int(x) for x in got) == (0, 0, 0)


def test_wrong_length(tmp_path):
    with pytest.raises(ValueError, match="expected a list of 7"):
        RealLabels(real_file(tmp_path), 7, torch.device("cpu"))


def test_not_a_list(tmp_path):
    with pytest.raises(ValueError, match="real.json"):
        RealLabels(real_file(tmp_path, {"a": 1}), 1, torch.device("cpu"))


def test_invalid_json(tmp_path):
    path = tmp_path / "real.json"
    path.write_text("[[1], [2")
    with pytest.raises(ValueError, match="JSON"):
        RealLabels(str(path), 2, torch.device("cpu"))


def test_missing_real_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="REAL_JSON_PATH"):
        RealLabels(str(tmp_path / "nope.json"), 2, torch.device("cpu"))


# -----------------------------------------------------------------------------
# mapping_dict.txt
# -----------------------------------------------------------------------------
def test_mapping_from_savetxt(tmp_path):
    path = str(tmp_path / "mapping_dict.txt")
    np.savetxt(path, np.array([5, 0, 21841, 7]))
    with open(path) as f:
        assert f.readline().strip() == "5.000000000000000000e+00"
    mapping = load_mapping_dict(path)
    assert mapping.dtype == np.int64
    assert mapping.tolist() == [5, 0, 21841, 7]
    assert load_mapping_dict(path, num_classes=21842).tolist() == [5, 0, 21841, 7]


def test_mapping_single_value(tmp_path):
    path = tmp_path / "m.txt"
    path.write_text("3\n")
    assert load_mapping_dict(str(path)).tolist() == [3]


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("values", ["1\n-2\n3\n", "1\n2.5\n", "1\nabc\n", "1\nnan\n"])
def test_mapping_rejects_bad_values(tmp_path, values):
    path = tmp_path / "m.txt"
    path.write_text(values)
    with pytest.raises(ValueError, match="m.txt"):
        load_mapping_dict(str(path))


def test_mapping_outside_model_classes(tmp_path):
    path = str(tmp_path / "m.txt")
    np.savetxt(path, np.array([1, 10]))
    with pytest.raises(ValueError, match="10"):
        load_mapping_dict(path, num_classes=10)


def test_mapping_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="MAPPING_DICT_PATH"):
        load_mapping_dict(str(tmp_path / "nope.txt"))


def test_val_logit_columns(tmp_path):
    path = str(tmp_path / "mapping_dict.txt")
    np.savetxt(path, np.array([4, 1, 9]))
    config = load_config(None, ["DATA.DATASET", "ImageNet-21K_Fall11", "MODEL.NUM_CLASSES", "21842",
                                "DATA.DATA_PATH_VAL", str(tmp_path), "DATA.MAPPING_DICT_PATH", path])
    columns = val_logit_columns(config, torch.device("cpu"))
    assert columns.tolist() == [4, 1, 9]
    # default location: DATA_PATH_TRAIN/mapping_dict.txt
    config = load_config(None, ["DATA.DATASET", "ImageNet-21K_Fall11", "MODEL.NUM_CLASSES", "21842",
                                "DATA.DATA_PATH_VAL", str(tmp_path), "DATA.DATA_PATH_TRAIN", str(tmp_path)])
    assert val_logit_columns(config, torch.device("cpu")).tolist() == [4, 1, 9]


def test_val_logit_columns_not_needed(tmp_path):
    for dataset in ("ImageNet-1K", "custom", "ImageNet-21K-Processed_Fall11"):
        config = load_config(None, ["DATA.DATASET", dataset, "DATA.DATA_PATH_VAL", str(tmp_path)])
        assert val_logit_columns(config, torch.device("cpu")) is None
    # 21K raw without a val folder: nothing to map
    config = load_config(None, ["DATA.DATASET", "ImageNet-21K_Winter21"])
    assert val_logit_columns(config, torch.device("cpu")) is None


def test_real_json_entries_follow_imagenet_image_numbers(tmp_path):
    """real.json is ordered by image number; a val list is sorted by class folder."""
    names = ["/n01/ILSVRC2012_val_00000003.JPEG", "/n01/ILSVRC2012_val_00000001.JPEG",
             "/n02/ILSVRC2012_val_00000002.JPEG"]
    path = tmp_path / "real.json"
    path.write_text(json.dumps([[10], [20, 21], []]))  # images 1, 2, 3
    real = RealLabels(str(path), 3, torch.device("cpu"), file_names=names)
    # line 0 is image 3 (no labels), line 1 image 1 (10), line 2 image 2 (20, 21)
    top5 = torch.tensor([[10, 1, 2, 3, 4], [10, 1, 2, 3, 4], [21, 20, 2, 3, 4]])
    r1, r5, n = real.hits(torch.tensor([0, 1, 2]), top5)
    assert (int(r1), int(r5), int(n)) == (2, 2, 2)
    # Other names: file-list order, as in the paper's code.
    plain = RealLabels(str(path), 3, torch.device("cpu"), file_names=["/a/x.png", "/a/y.png", "/b/z.png"])
    r1, _, n = plain.hits(torch.tensor([0, 1, 2]), top5)
    assert (int(r1), int(n)) == (1, 2)


def test_real_json_too_short_for_the_image_numbers(tmp_path):
    path = tmp_path / "real.json"
    path.write_text(json.dumps([[1], [2]]))
    with pytest.raises(ValueError, match="real.json has 2 entries"):
        RealLabels(str(path), 2, torch.device("cpu"), file_names=["/n/ILSVRC2012_val_00000001.JPEG",
                                                                   "/n/ILSVRC2012_val_00000009.JPEG"])
