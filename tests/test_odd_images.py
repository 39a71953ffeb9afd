"""The odd files of real image trees, through every view of the pipeline, pixel by pixel
against Pillow: CMYK and grayscale JPEGs and a PNG named .JPEG (all in ImageNet-1K
train), RGBA and 16-bit PNGs, and an EXIF-rotated JPEG (user trees).

Decoding is DALI's CPU decoder here; with a CUDA GPU the same tests also run with
``mixed`` (nvJPEG) decoding (tests/gpu/run_gpu_checks.sh runs this file).

Bounds, in levels of 255: lossless files (PNG) must match to rounding (0.51); JPEGs may
differ by the decoders' IDCT and colour-conversion rounding, each within 1 level for a
conforming decoder (IEEE 1180 for the IDCT), so 3 levels; the test images are flat
within each 8x8 block, where chroma upsampling adds nothing.
"""
import os

import numpy as np
import pytest
import torch

from data.build import build_train_loader, build_val_loader, load_file_lists
from data.pipeline import IMAGENET_MEAN, IMAGENET_STD
from test_pipeline import by_index, collect, make_config

SIZE = 16
JPEG_BOUND, LOSSLESS_BOUND = 3.0, 0.51
ORIENTATION = 0x0112  # EXIF tag; 6 = "rotate 90 degrees clockwise to display"

DECODERS = ["cpu", pytest.param("mixed", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                     reason="needs a CUDA GPU"))]


def _rgb_reference(path):
    """What the pipeline must show for `path`, as an HxWx3 float array: Pillow's decoding
    with the EXIF orientation applied, converted to RGB. 16-bit images are scaled to 8 bits
    (Pillow's own convert('RGB') clips them at 255 instead, which is no reference)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode.startswith("I;16") or im.mode == "I":
            return np.repeat(np.asarray(im, dtype=np.float64)[..., None] * 255 / 65535, 3, axis=2)
        return np.asarray(im.convert("RGB"), dtype=np.float64)


def make_odd_tree(root):
    """root/c00/*: one file of each kind, SIZE x SIZE flat colour (the EXIF one SIZE wide
    and 2*SIZE tall once rotated: red above blue). Returns {kind: file name}."""
    from PIL import Image

    folder = os.path.join(root, "c00")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    files = {
        "rgb": ("rgb.JPEG", Image.new("RGB", (SIZE, SIZE), (200, 60, 30)), "JPEG", {}),
        "cmyk": ("cmyk.JPEG", Image.new("CMYK", (SIZE, SIZE), (20, 180, 200, 30)), "JPEG", {}),
        "grayscale": ("gray.JPEG", Image.new("L", (SIZE, SIZE), 120), "JPEG", {}),
        "png_as_jpeg": ("png_named.JPEG", Image.new("RGB", (SIZE, SIZE), (30, 150, 220)), "PNG", {}),
        "rgba": ("rgba.png", Image.fromarray(np.dstack([np.full((SIZE, SIZE, 3), (90, 200, 40), np.uint8),
                                                        rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)])),
                 "PNG", {}),
        "16-bit": ("gray16.png", Image.fromarray(np.full((SIZE, SIZE), 40000, dtype=np.uint16)), "PNG", {}),
    }
    stored = np.zeros((SIZE, 2 * SIZE, 3), np.uint8)  # as stored: red left, blue right
    stored[:, :SIZE] = (230, 20, 20)
    stored[:, SIZE:] = (20, 20, 230)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    files["exif_rotated"] = ("rotated.JPEG", Image.fromarray(stored), "JPEG", {"exif": exif.tobytes()})
    names = {}
    for kind, (name, image, fmt, extra) in files.items():
        image.save(os.path.join(folder, name), format=fmt, quality=95, **extra)
        names[kind] = name
    with open(os.path.join(root, "file_list.txt"), "w") as f:
        f.write("".join(f"/c00/{name} 0\n" for name in names.values()))
    return names


def bound(kind):
    return LOSSLESS_BOUND if kind in ("png_as_jpeg", "rgba", "16-bit") else JPEG_BOUND


def pixels(image):
    """A normalised CHW tensor back to HxWx3 levels of 255."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image.cpu().double() * std + mean).permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd")
    names = make_odd_tree(str(root / "train"))
    make_odd_tree(str(root / "val"))
    return root, names


def _config(root, decoder, *extra):
    return make_config(root / "train", root / "val", "MODEL.NUM_CLASSES", "1", "DATA.IMG_SIZE", str(SIZE),
                       "DATA.DECODE_DEVICE", decoder, "AUG.AUTO_AUGMENT", "False", *extra)


def _device(decoder):
    return 0 if decoder == "mixed" else None


def _centre_crop(reference):
    h, w, _ = reference.shape
    top, left = (h - SIZE) // 2, (w - SIZE) // 2
    return reference[top : top + SIZE, left : left + SIZE]


def _check_against_reference(images, data, names):
    for i, kind in enumerate(names):
        expected = _centre_crop(_rgb_reference(data.full_path(i)))
        got = pixels(images[i])
        assert got.shape == (SIZE, SIZE, 3), kind
        np.testing.assert_allclose(got, expected, rtol=0, atol=bound(kind), err_msg=kind)


@pytest.mark.parametrize("decoder", DECODERS)
def test_eval_view_matches_pillow(odd, decoder):
    """Produce mode's eval view: shorter side to SIZE (no resampling here), centre crop."""
    root, names = odd
    config = _config(root, decoder, "DATA.BATCH_SIZE_TRAIN", str(len(names)))
    data = load_file_lists(config)
    batches = collect(build_train_loader(config, data.train, 0, 0, 1, _device(decoder), eval_view=True))
    _check_against_reference(by_index(batches, "eval_images"), data.train, names)


@pytest.mark.parametrize("decoder", DECODERS)
def test_val_view_matches_pillow(odd, decoder):
    root, names = odd
    config = _config(root, decoder, "TEST.CROP", "True", "TEST.CROP_PCT", "1.0")
    data = load_file_lists(config)
    images = by_index(collect(build_val_loader(config, data.val, 0, 1, _device(decoder))), "images")
    _check_against_reference(images, data.val, names)


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("eval_view", [False, True], ids=["fused-decode-crop", "decode-then-crop"])
def test_train_view_matches_pillow(odd, decoder, eval_view):
    """The augmented view, with the crop pinned to the whole image (area 1, aspect 1/2:
    the rotated image's shape, which the unrotated one cannot give) and no flip. Flat
    images must keep their colour exactly; the rotated one must show red above blue."""
    root, names = odd
    config = _config(root, decoder, "DATA.BATCH_SIZE_TRAIN", str(len(names)), "AUG.HORIZONTAL_FLIP", "False",
                     "AUG.RANDOM_RESIZED_CROP_SCALE", "(1.0, 1.0)", "AUG.RANDOM_RESIZED_CROP_RATIO", "(0.5, 0.5)")
    data = load_file_lists(config)
    images = by_index(collect(build_train_loader(config, data.train, 0, 0, 1, _device(decoder),
                                                 eval_view=eval_view)), "images")
    for i, kind in enumerate(names):
        got = pixels(images[i])
        reference = _rgb_reference(data.train.full_path(i))
        assert got.shape == (SIZE, SIZE, 3), kind
        if kind == "exif_rotated":
            # 16x32 squeezed to 16x16: rows 0-7 come from red, 8-15 from blue; the two rows
            # at the seam mix both through the resampling filter.
            top, bottom = reference[0, 0], reference[-1, 0]
            np.testing.assert_allclose(got[:6], np.broadcast_to(top, (6, SIZE, 3)), atol=JPEG_BOUND, err_msg=kind)
            np.testing.assert_allclose(got[10:], np.broadcast_to(bottom, (6, SIZE, 3)), atol=JPEG_BOUND, err_msg=kind)
        else:
            colour = reference.reshape(-1, 3).mean(axis=0) if kind != "rgba" else reference[0, 0]
            np.testing.assert_allclose(got, np.broadcast_to(colour, got.shape), atol=bound(kind), err_msg=kind)


def test_prepare_check_decode_counts_each_kind_and_lists_the_undecodable(tmp_path, capsys):
    from data.prepare import main

    root = tmp_path / "tree"
    names = make_odd_tree(str(root))
    with open(root / "c00" / names["rgb"], "rb") as f:
        whole = f.read()
    (root / "c00" / "truncated.JPEG").write_bytes(whole[: len(whole) // 2])
    (root / "c00" / "text.JPEG").write_text("not an image\n")
    with open(root / "file_list.txt", "a") as f:
        f.write("/c00/truncated.JPEG 0\n/c00/text.JPEG 0\n")
    lines = len(names) + 2
    assert main(["check", str(root / "file_list.txt"), "--decode", "--no-progress", "--workers", "2"]) == 1
    out = capsys.readouterr().out
    assert f"decoded {lines} images: {lines - 2} fine, 2 undecodable" in out
    assert ("odd images, decoded and converted to 8-bit RGB by the pipeline: CMYK 1, grayscale 1, PNG named .JPEG 1, "
            "RGBA (alpha dropped) 1, 16-bit 1, EXIF-rotated 1") in out
    list_path = root / "file_list.txt"
    assert f"{list_path}:{lines - 1}: undecodable image {root / 'c00' / 'truncated.JPEG'}: OSError" in out
    assert f"{list_path}:{lines}: undecodable image {root / 'c00' / 'text.JPEG'}: UnidentifiedImageError" in out
    assert out.splitlines()[-1] == f"{list_path}: 2 problems (undecodable 2)"
    # Without --decode only the list itself is checked: the same tree is clean.
    assert main(["check", str(list_path)]) == 0
