"""data/pipeline.py + data/build.py on CPU-only DALI pipelines (device_id=None): views,
shapes, determinism in (SEED, epoch), sharding of validation, and errors that name the
image and its file-list line."""
import os

import numpy as np
import pytest
import torch

from conftest import ROOT
from data.build import build_train_loader, build_val_loader, dali_device_id, load_file_lists
from dynunc.lists.file_list import FileListError
from data.pipeline import IMAGENET_MEAN, IMAGENET_STD
from data.reader import DataError, train_shard
from utils.config import load_config

DEMO = os.path.join(ROOT, "configs", "demo-mnist.yaml")


def make_config(train, val, *extra):
    opts = ["DATA.DATA_PATH_TRAIN", str(train), "DATA.DATA_PATH_VAL", str(val), "MODEL.NUM_CLASSES", "3",
            "DATA.IMG_SIZE", "16", "DATA.BATCH_SIZE_TRAIN", "4", "DATA.BATCH_SIZE_VAL", "4",
            "DATA.NUM_WORKERS", "1", "DATA.NUM_THREADS", "1", "DATA.DECODE_DEVICE", "cpu", *extra]
    return load_config(DEMO, opts)


def collect(loader):
    """All batches of one pass as lists of tensors per key."""
    out = {}
    for batch in loader:
        for k, v in batch.items():
            out.setdefault(k, []).append(v.clone())
    return out


def by_index(batches, key):
    """{sample index: image tensor}."""
    result = {}
    for images, indices in zip(batches[key], batches["indices"]):
        for img, i in zip(images, indices.tolist()):
            result[i] = img
    return result


def reference_channel_means(path, size, shorter=None):
    """PIL reference of a resized (+ centre-cropped) view, normalised, mean per channel."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if shorter is None:
            im = im.resize((size, size), Image.BILINEAR)
        else:
            w, h = im.size
            scale = shorter / min(w, h)
            im = im.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
            w, h = im.size
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
        pixels = np.asarray(im, dtype=np.float64)
    return (pixels.mean(axis=(0, 1)) - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)


@pytest.fixture
def setup(image_tree):
    train, val = image_tree
    config = make_config(train, val)
    return config, load_file_lists(config), train, val


# -----------------------------------------------------------------------------
# Train loader
# -----------------------------------------------------------------------------
def test_train_loader_shapes_and_labels(setup):
    config, data, _, _ = setup
    loader = build_train_loader(config, data.train, epoch=0, rank=0, world_size=1, device_id=None)
    assert len(loader) == 7  # 30 // 4 full batches
    batches = collect(loader)
    assert set(batches) == {"images", "labels", "indices"}  # no eval view outside produce mode
    assert len(batches["images"]) == 7
    for images, labels, indices in zip(batches["images"], batches["labels"], batches["indices"]):
        assert images.shape == (4, 3, 16, 16)
        assert images.dtype == torch.float32
        assert labels.shape == indices.shape == (4,)
        assert labels.dtype == indices.dtype == torch.int64
        assert labels.tolist() == data.train.labels[indices.numpy()].tolist()
    order = torch.cat(batches["indices"]).numpy()
    assert np.array_equal(order, train_shard(30, config.SEED, 0, 0, 1, 4))


def test_produce_mode_views(setup):
    config, data, _, _ = setup
    batches = collect(build_train_loader(config, data.train, 0, 0, 1, None, eval_view=True))
    assert set(batches) == {"images", "eval_images", "labels", "indices"}
    for images, eval_images in zip(batches["images"], batches["eval_images"]):
        assert eval_images.shape == images.shape == (4, 3, 16, 16)
        assert eval_images.dtype == torch.float32
    # the eval view is centred and un-augmented; the train view is a random crop of it
    train_view, eval_view = by_index(batches, "images"), by_index(batches, "eval_images")
    assert any(not torch.allclose(train_view[i], eval_view[i]) for i in train_view)


def test_eval_view_is_normalised_rgb(setup):
    config, data, _, _ = setup
    batches = collect(build_train_loader(config, data.train, 0, 0, 1, None, eval_view=True))
    eval_view = by_index(batches, "eval_images")
    for i in list(eval_view)[:6]:
        expected = reference_channel_means(data.train.full_path(i), 16, shorter=16)
        got = eval_view[i].double().mean(dim=(1, 2)).numpy()
        np.testing.assert_allclose(got, expected, atol=0.1)


def test_eval_view_identical_across_epochs(setup):
    config, data, _, _ = setup
    a = by_index(collect(build_train_loader(config, data.train, 0, 0, 1, None, eval_view=True)), "eval_images")
    b = by_index(collect(build_train_loader(config, data.train, 1, 0, 1, None, eval_view=True)), "eval_images")
    common = set(a) & set(b)
    assert len(common) >= 20
    for i in common:
        assert torch.equal(a[i], b[i]), i


def test_train_view_depends_only_on_seed_and_epoch(setup):
    config, data, _, _ = setup

    def run(cfg, epoch):
        return collect(build_train_loader(cfg, data.train, epoch, 0, 1, None, eval_view=True))

    first, again, other_epoch = run(config, 2), run(config, 2), run(config, 3)
    for key in ("images", "eval_images", "indices", "labels"):
        for x, y in zip(first[key], again[key]):
            assert torch.equal(x, y), key
    # another epoch: another order and other crops of the same samples
    assert not torch.equal(torch.cat(first["indices"]), torch.cat(other_epoch["indices"]))
    a, b = by_index(first, "images"), by_index(other_epoch, "images")
    common = set(a) & set(b)
    assert sum(not torch.equal(a[i], b[i]) for i in common) >= len(common) // 2
    # another SEED, same epoch: another order too
    reseeded = config.clone()
    reseeded.defrost()
    reseeded.SEED = config.SEED + 1
    reseeded.freeze()
    assert not torch.equal(torch.cat(first["indices"]), torch.cat(run(reseeded, 2)["indices"]))


def test_train_loader_ranks_are_disjoint(setup):
    config, data, _, _ = setup
    shards = [torch.cat(collect(build_train_loader(config, data.train, 0, r, 2, None))["indices"]) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 12  # 15 per rank -> 3 full batches of 4
    assert not set(shards[0].tolist()) & set(shards[1].tolist())


def test_auto_augment_and_flip_run(setup):
    _, data, train, val = setup
    config = make_config(train, val, "AUG.AUTO_AUGMENT", "True", "AUG.HORIZONTAL_FLIP", "True")
    batches = collect(build_train_loader(config, data.train, 0, 0, 1, None, eval_view=True))
    assert len(batches["images"]) == 7
    assert all(torch.isfinite(x).all() for x in batches["images"])
    plain = by_index(collect(build_train_loader(make_config(train, val), data.train, 0, 0, 1, None, eval_view=True)),
                     "eval_images")
    augmented = by_index(batches, "eval_images")
    for i in augmented:  # augmentation never touches the eval view
        assert torch.equal(augmented[i], plain[i])


def test_loader_is_one_pass(setup):
    config, data, _, _ = setup
    loader = build_train_loader(config, data.train, 0, 0, 1, None)
    collect(loader)
    with pytest.raises(RuntimeError, match="one pass"):
        collect(loader)


def test_too_few_samples_for_a_batch(setup):
    _, data, train, val = setup
    config = make_config(train, val, "DATA.BATCH_SIZE_TRAIN", "16")
    with pytest.raises(ValueError, match="BATCH_SIZE_TRAIN"):
        build_train_loader(config, data.train, 0, 0, 2, None)


# -----------------------------------------------------------------------------
# Validation loader
# -----------------------------------------------------------------------------
def test_val_loader_two_ranks_cover_each_index_once(setup):
    config, data, _, _ = setup
    seen = []
    for rank in range(2):
        loader = build_val_loader(config, data.val, rank, 2, None)
        batches = collect(loader)
        sizes = [len(x) for x in batches["indices"]]
        assert sizes == ([4, 4] if rank == 0 else [4, 3])  # 8 and 7 samples, partial last batch
        assert len(loader) == len(sizes)
        for images, labels, indices in zip(batches["images"], batches["labels"], batches["indices"]):
            assert images.shape == (len(indices), 3, 16, 16)
            assert images.dtype == torch.float32
            assert labels.tolist() == data.val.labels[indices.numpy()].tolist()
        seen.extend(torch.cat(batches["indices"]).tolist())
    assert sorted(seen) == list(range(15))  # every sample once: no padding, no duplicates


@pytest.mark.parametrize("crop", [False, True])
def test_val_view_matches_reference(setup, crop):
    _, data, train, val = setup
    config = make_config(train, val, "TEST.CROP", str(crop))
    batches = collect(build_val_loader(config, data.val, 0, 1, None))
    images = by_index(batches, "images")
    assert sorted(images) == list(range(15))
    shorter = int(16 / config.TEST.CROP_PCT) if crop else None
    for i in (0, 7, 14):
        expected = reference_channel_means(data.val.full_path(i), 16, shorter=shorter)
        np.testing.assert_allclose(images[i].double().mean(dim=(1, 2)).numpy(), expected, atol=0.1)


def test_val_loader_is_deterministic(setup):
    config, data, _, _ = setup
    a = collect(build_val_loader(config, data.val, 0, 1, None))
    b = collect(build_val_loader(config, data.val, 0, 1, None))
    for x, y in zip(a["images"], b["images"]):
        assert torch.equal(x, y)


# -----------------------------------------------------------------------------
# Bad data
# -----------------------------------------------------------------------------
def add_leading_blank_line(list_path):
    """Shift every entry one line down, so line numbers differ from index + 1."""
    with open(list_path) as f:
        text = f.read()
    with open(list_path, "w") as f:
        f.write("\n" + text)


def test_missing_train_image_names_file_and_line(image_tree):
    train, val = image_tree
    add_leading_blank_line(train / "file_list.txt")
    config = make_config(train, val)
    data = load_file_lists(config)
    victim = int(train_shard(30, config.SEED, 0, 0, 1, 4)[9])  # in the third batch
    os.remove(data.train.full_path(victim))
    with pytest.raises(DataError) as info:
        collect(build_train_loader(config, data.train, 0, 0, 1, None, eval_view=True))
    message = str(info.value)
    assert f"file_list.txt:{victim + 2}" in message
    assert data.train.full_path(victim) in message


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_train_image_names_file_and_line(image_tree, damage):
    train, val = image_tree
    add_leading_blank_line(train / "file_list.txt")
    config = make_config(train, val)
    data = load_file_lists(config)
    victim = int(train_shard(30, config.SEED, 0, 0, 1, 4)[13])
    path = data.train.full_path(victim)
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(content[: len(content) // 2] if damage == "truncate" else b"\xff\xd8\xff" + b"x" * 200)
    with pytest.raises(DataError) as info:
        collect(build_train_loader(config, data.train, 0, 0, 1, None))
    message = str(info.value)
    assert f"file_list.txt:{victim + 2}" in message
    assert path in message


def test_corrupt_val_image_names_file_and_line(image_tree):
    train, val = image_tree
    config = make_config(train, val)
    data = load_file_lists(config)
    path = data.val.full_path(11)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(DataError) as info:
        collect(build_val_loader(config, data.val, 0, 1, None))
    assert "file_list.txt:12" in str(info.value)
    assert path in str(info.value)


def test_missing_val_image_on_rank_1(image_tree):
    train, val = image_tree
    config = make_config(train, val)
    data = load_file_lists(config)
    os.remove(data.val.full_path(9))  # index 9 belongs to rank 1 of 2
    collect(build_val_loader(config, data.val, 0, 2, None))  # rank 0 does not read it
    with pytest.raises(DataError, match="file_list.txt:10"):
        collect(build_val_loader(config, data.val, 1, 2, None))


# -----------------------------------------------------------------------------
# File lists and settings checked at start-up
# -----------------------------------------------------------------------------
def test_load_file_lists(setup):
    config, data, train, val = setup
    assert len(data.train) == 30 and len(data.val) == 15
    assert data.train.root == str(train)
    assert data.val.full_path(0) == os.path.join(str(val), "c00", "img_000.jpg")


def test_load_file_lists_coreset(setup, tmp_path):
    config, _, train, _ = setup
    coreset = tmp_path / "coreset.txt"
    coreset.write_text("/c01/img_003.jpg 1\n/c02/img_000.jpg 2\n")
    data = load_file_lists(config, coreset=str(coreset))
    assert data.train.files == ["/c01/img_003.jpg", "/c02/img_000.jpg"]
    assert data.train.root == str(train)  # coreset paths are relative to the training images
    assert data.train.path == str(coreset)
    assert data.train.rows.tolist() == [13, 20]  # rows of the full training list


def test_load_file_lists_refuses_a_coreset_line_not_in_the_train_list(setup, tmp_path):
    config, _, train, _ = setup
    coreset = tmp_path / "coreset.txt"
    coreset.write_text("/c01/img_003.jpg 1\n/c01/img_099.jpg 1\n")
    with pytest.raises(FileListError) as info:
        load_file_lists(config, coreset=str(coreset))
    assert str(info.value) == (f"{coreset}:2: '/c01/img_099.jpg' is not in the full list "
                               f"{train / 'file_list.txt'}")


@pytest.mark.parametrize("which", ["train", "val"])
def test_label_out_of_range_at_load_time(image_tree, which):
    train, val = image_tree
    folder = train if which == "train" else val
    with open(folder / "file_list.txt", "a") as f:
        f.write("/c00/img_000.jpg 3\n")
    lines = (folder / "file_list.txt").read_text().count("\n")
    with pytest.raises(FileListError, match=f"file_list.txt:{lines}"):
        load_file_lists(make_config(train, val))


def test_mixed_decoding_without_cuda(setup):
    _, data, train, val = setup
    config = make_config(train, val, "DATA.DECODE_DEVICE", "mixed")
    with pytest.raises(ValueError, match="mixed"):
        build_train_loader(config, data.train, 0, 0, 1, device_id=None)
    with pytest.raises(ValueError, match="mixed"):
        build_val_loader(config, data.val, 0, 1, device_id=None)


def test_decode_device_choice(setup):
    _, _, train, val = setup
    assert dali_device_id(make_config(train, val, "DATA.DECODE_DEVICE", "auto"), None) is None
    assert dali_device_id(make_config(train, val, "DATA.DECODE_DEVICE", "auto"), 1) == 1
    assert dali_device_id(make_config(train, val, "DATA.DECODE_DEVICE", "cpu"), 1) is None
    assert dali_device_id(make_config(train, val, "DATA.DECODE_DEVICE", "mixed"), 0) == 0
    with pytest.raises(ValueError, match="DECODE_DEVICE"):
        dali_device_id(make_config(train, val, "DATA.DECODE_DEVICE", "gpu"), 0)


# -----------------------------------------------------------------------------
# Geometry: which part of the image each view shows
# -----------------------------------------------------------------------------
RED, BLUE = (255, 0, 0), (0, 0, 255)


def striped_tree(root, count=32):
    """40x20 PNGs: the 6 leftmost columns red, the rest blue. Centre crops never reach
    the red strip; a plain resize keeps it on the left; a flip moves it to the right."""
    from PIL import Image

    os.makedirs(root / "c00", exist_ok=True)
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :] = BLUE
    pixels[:, :6] = RED
    lines = []
    for i in range(count):
        Image.fromarray(pixels).save(root / "c00" / f"s{i:02d}.png")
        lines.append(f"/c00/s{i:02d}.png {i % 3}")
    (root / "file_list.txt").write_text("\n".join(lines) + "\n")


def red_columns(image):
    """Mask of the output columns that are mostly red (from a normalised CHW image)."""
    red_level = (255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    return (image[0] > red_level / 2).float().mean(dim=0) > 0.5


@pytest.fixture
def striped(tmp_path):
    train, val = tmp_path / "strain", tmp_path / "sval"
    striped_tree(train)
    striped_tree(val, count=6)
    return train, val


def test_eval_view_is_a_centre_crop(striped):
    train, val = striped
    config = make_config(train, val)
    data = load_file_lists(config)
    batches = collect(build_train_loader(config, data.train, 0, 0, 1, None, eval_view=True))
    blue = torch.tensor([(0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c] for c in range(2)] +
                        [(255 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]])
    for images in batches["eval_images"]:
        # shorter side 20 -> 16 (32x16), centre 16 columns = original columns 10..30: all blue
        torch.testing.assert_close(images, blue.view(1, 3, 1, 1).expand_as(images), atol=0.05, rtol=0)


@pytest.mark.parametrize("crop", [False, True])
def test_val_view_crop_or_resize(striped, crop):
    train, val = striped
    config = make_config(train, val, "TEST.CROP", str(crop))
    data = load_file_lists(config)
    for images in collect(build_val_loader(config, data.val, 0, 1, None))["images"]:
        for image in images:
            red = red_columns(image)
            if crop:  # resize shorter side to 18, centre 16 of 36 columns: no red
                assert not red.any()
            else:  # squeezed to 16x16: the red strip (6 of 40 columns) is the left ~2 columns
                assert red[0] and not red[4:].any()


@pytest.mark.parametrize("flip", [False, True])
def test_horizontal_flip_switch(striped, flip):
    train, val = striped
    config = make_config(train, val, "AUG.HORIZONTAL_FLIP", str(flip))
    data = load_file_lists(config)
    left = right = 0
    for epoch in range(2):
        for images in collect(build_train_loader(config, data.train, epoch, 0, 1, None))["images"]:
            for image in images:
                red = red_columns(image)
                left += bool(red[:8].any())
                right += bool(red[8:].any())
    assert left > 0  # some random crops reach the red strip
    assert (right > 0) == flip


def gradient_tree(root, count=6):
    """40x20 PNGs whose red channel is 6 * column (a linear ramp: any resize or crop of
    it is a ramp whose slope and offset say exactly which region was kept)."""
    from PIL import Image

    os.makedirs(root / "c00", exist_ok=True)
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :, 0] = (6 * np.arange(40)).astype(np.uint8)
    pixels[:, :, 1] = 100
    lines = []
    for i in range(count):
        Image.fromarray(pixels).save(root / "c00" / f"g{i}.png")
        lines.append(f"/c00/g{i}.png 0")
    (root / "file_list.txt").write_text("\n".join(lines) + "\n")


def expected_red_columns(resized_width, columns, offset):
    """Red value (0..255) at output columns `columns` of a crop starting at `offset` of the
    40-column ramp resized to `resized_width` columns (pixel centres at x + 0.5)."""
    u = (offset + np.asarray(columns) + 0.5) * 40 / resized_width
    return 6 * (u - 0.5)


def red_profile(image):
    """Mean red value (0..255) per output column of a normalised CHW image."""
    return (image[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]).mean(dim=0).double().numpy()


@pytest.fixture
def ramp(tmp_path):
    train, val = tmp_path / "gtrain", tmp_path / "gval"
    gradient_tree(train, count=8)
    gradient_tree(val)
    return train, val


def test_eval_view_geometry(ramp):
    train, val = ramp
    config = make_config(train, val)
    batches = collect(build_train_loader(config, load_file_lists(config).train, 0, 0, 1, None, eval_view=True))
    # shorter side 20 -> 16: 32 columns; centre crop starts at column 8
    expected = expected_red_columns(32, range(16), 8)
    for images in batches["eval_images"]:
        for image in images:
            np.testing.assert_allclose(red_profile(image), expected, atol=2.0)


@pytest.mark.parametrize("crop_pct", [0.875, 0.5])
def test_val_view_geometry_with_crop_pct(ramp, crop_pct):
    train, val = ramp
    config = make_config(train, val, "TEST.CROP", "True", "TEST.CROP_PCT", str(crop_pct))
    shorter = int(16 / crop_pct)  # 18 or 32
    width = 40 * shorter // 20
    expected = expected_red_columns(width, range(16), (width - 16) // 2)
    for images in collect(build_val_loader(config, load_file_lists(config).val, 0, 1, None))["images"]:
        for image in images:
            np.testing.assert_allclose(red_profile(image), expected, atol=2.0)


def test_val_view_plain_resize_geometry(ramp):
    train, val = ramp
    config = make_config(train, val, "TEST.CROP", "False")
    inner = range(2, 14)  # away from the borders, where the resampling filter is clamped
    expected = expected_red_columns(16, inner, 0)
    for images in collect(build_val_loader(config, load_file_lists(config).val, 0, 1, None))["images"]:
        for image in images:
            np.testing.assert_allclose(red_profile(image)[list(inner)], expected, atol=2.0)


def test_augmentation_seed_varies_with_epoch_rank_and_seed(ramp):
    """Identical images: the train view at each batch position shows only the random crop
    parameters, which must change with the epoch, the rank and SEED (not repeat)."""
    train, val = ramp
    config = make_config(train, val, "AUG.HORIZONTAL_FLIP", "True")
    data = load_file_lists(config)

    def views(cfg, epoch, rank):
        return torch.cat(collect(build_train_loader(cfg, data.train, epoch, rank, 2, None))["images"])

    base = views(config, 0, 0)
    assert base.shape == (4, 3, 16, 16)
    assert torch.equal(base, views(config, 0, 0))  # reproducible
    assert not torch.equal(base, views(config, 1, 0))
    assert not torch.equal(base, views(config, 0, 1))
    reseeded = make_config(train, val, "AUG.HORIZONTAL_FLIP", "True", "SEED", "1")
    assert not torch.equal(base, views(reseeded, 0, 0))
