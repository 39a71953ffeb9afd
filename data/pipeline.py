"""The one DALI pipeline definition, with switches, and the loader that wraps it.

Views:
- train: random-resized-crop, horizontal flip, optional ImageNet AutoAugment;
- eval (produce mode, beside the train view, from the same decoded image): shorter side
  resized to IMG_SIZE, centre crop IMG_SIZE x IMG_SIZE;
- val: shorter side resized to IMG_SIZE / CROP_PCT, centre crop (or a plain resize).

Decoding is "mixed" (nvJPEG on the process's GPU) when the pipeline has a device, and
"cpu" otherwise; the same definition serves both. Every image comes out as 8-bit RGB:
CMYK and grayscale JPEGs are converted, a PNG named .JPEG is decoded by its content,
alpha is dropped (not composited), 16-bit images are scaled to 8 bits, and the EXIF
orientation is applied (the image as a viewer shows it, as Pillow's
ImageOps.exif_transpose gives it). tests/test_odd_images.py checks each against Pillow.
"""
import warnings
from dataclasses import dataclass
from typing import Dict, Iterator, Optional

import nvidia.dali.fn as fn
import nvidia.dali.types as types
import torch
from nvidia.dali import pipeline_def
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from data.reader import BatchReader, DataError, find_undecodable

IMAGENET_MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
IMAGENET_STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]

INTERPOLATIONS = {
    "bicubic": types.INTERP_CUBIC,
    "bilinear": types.INTERP_LINEAR,
    "triangular": types.INTERP_TRIANGULAR,
    "nearest": types.INTERP_NN,
}


@dataclass(frozen=True)
class ViewSpec:
    """The switches of the pipeline."""

    img_size: int
    interpolation: str = "bicubic"
    train: bool = True  # train view (augmented) or val view
    eval_view: bool = False  # produce mode: add the un-augmented view
    auto_augment: bool = False
    hflip: bool = True
    crop_scale: tuple = (0.08, 1.0)
    crop_ratio: tuple = (3 / 4, 4 / 3)
    test_crop: bool = True
    crop_pct: float = 0.875


# Apply the EXIF orientation (DALI's default, stated here so that it is a decision): an
# image taken with a rotated camera is learned upright, as it is displayed.
ADJUST_ORIENTATION = True


def _decode(jpegs, decode_device: str):
    return fn.decoders.image(jpegs, device=decode_device, output_type=types.RGB, adjust_orientation=ADJUST_ORIENTATION)


def _normalize(images, crop=None, mirror=None):
    kwargs = {"crop": crop} if crop else {}
    if mirror is not None:
        kwargs["mirror"] = mirror
    return fn.crop_mirror_normalize(
        images, dtype=types.FLOAT, output_layout="CHW", mean=IMAGENET_MEAN, std=IMAGENET_STD, **kwargs
    )


def _centre_view(images, size: int, shorter: int, interp):
    images = fn.resize(images, resize_shorter=shorter, interp_type=interp)
    return _normalize(images, crop=(size, size))


@pipeline_def(enable_conditionals=True)
def image_pipeline(reader: BatchReader, spec: ViewSpec, decode_device: str):
    jpegs, labels, indices = fn.external_source(source=reader, num_outputs=3, batch=True, batch_info=True)
    interp = INTERPOLATIONS[spec.interpolation]
    size = spec.img_size
    if not spec.train:
        images = _decode(jpegs, decode_device)
        if spec.test_crop:
            view = _centre_view(images, size, int(size / spec.crop_pct), interp)
        else:
            view = _normalize(fn.resize(images, size=(size, size), interp_type=interp))
        outputs = [view]
    else:
        if spec.eval_view:
            # Decode once; both views come from the same decoded image.
            images = _decode(jpegs, decode_device)
            train = fn.random_resized_crop(
                images, size=(size, size), random_area=spec.crop_scale, random_aspect_ratio=spec.crop_ratio,
                interp_type=interp,
            )
        else:
            train = fn.decoders.image_random_crop(
                jpegs, device=decode_device, output_type=types.RGB, random_area=spec.crop_scale,
                random_aspect_ratio=spec.crop_ratio, adjust_orientation=ADJUST_ORIENTATION,
            )
            train = fn.resize(train, size=(size, size), interp_type=interp)
        if spec.auto_augment:
            from nvidia.dali.auto_aug import auto_augment

            train = auto_augment.auto_augment_image_net(train, shape=(size, size))
        mirror = fn.random.coin_flip(probability=0.5) if spec.hflip else None
        outputs = [_normalize(train, mirror=mirror)]
        if spec.eval_view:
            outputs.append(_centre_view(images, size, size, interp))
    if decode_device == "mixed":
        labels, indices = labels.gpu(), indices.gpu()
    return (*outputs, labels, indices)


class DaliLoader:
    """Iterates one pass (an epoch) over a reader's samples, yielding dicts of tensors:
    ``images``, ``labels``, ``indices`` (positions in the full file list) and, in produce
    mode, ``eval_images``. A decoding failure is re-raised naming the image and line."""

    def __init__(self, reader: BatchReader, spec: ViewSpec, seed: int, device_id: Optional[int], num_threads: int,
                 prefetch: int):
        self.reader = reader
        self.spec = spec
        decode_device = "mixed" if device_id is not None else "cpu"
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="nvidia.dali")
            self.pipe = image_pipeline(
                reader, spec, decode_device, batch_size=reader.batch_size, num_threads=num_threads,
                device_id=device_id, seed=seed, prefetch_queue_depth=prefetch,
            )
            self.pipe.build()
        self.names = ["images"] + (["eval_images"] if spec.train and spec.eval_view else []) + ["labels", "indices"]
        self._iterator = None

    def __len__(self) -> int:
        return self.reader.num_batches

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        if self._iterator is not None:
            raise RuntimeError("a DaliLoader is one pass; build a new one for the next epoch")
        self._iterator = DALIGenericIterator(self.pipe, self.names, auto_reset=False, prepare_first_batch=False)
        consumed = 0
        while True:
            try:
                batch = next(self._iterator)[0]
            except StopIteration:
                break
            except RuntimeError as e:
                error = self._explain(e, consumed)
                if error is e:
                    raise
                raise error from e
            consumed += 1
            batch["labels"] = batch["labels"].view(-1)
            batch["indices"] = batch["indices"].view(-1)
            yield batch
        self.reader.close()

    def _explain(self, error: RuntimeError, consumed: int) -> Exception:
        """Turn DALI's generic pipeline error into one that names the file."""
        if isinstance(error, DataError):  # raised by our reader: it names the file already
            return error
        self.reader.close()
        in_flight = range(consumed, min(consumed + self.pipe.prefetch_queue_depth + 1, self.reader.num_batches))
        candidates = [int(i) for it in in_flight for i in self.reader.batch_indices(it)]
        bad = find_undecodable(self.reader.file_list, candidates)
        if bad:
            return DataError("undecodable image: " + "; ".join(bad))
        return DataError(
            f"the image pipeline failed on one of {len(candidates)} images of batches {in_flight.start}.."
            f"{in_flight.stop - 1} of {self.reader.file_list.path}: {error}"
        )
