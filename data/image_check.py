"""Decode every image of a file list once, with Pillow, and sort out the odd ones.

Real trees hold files that are images but not plain 8-bit RGB JPEGs: ImageNet-1K train
has CMYK JPEGs, grayscale JPEGs and a PNG named ``.JPEG``; user trees add alpha
channels, 16-bit PNGs and EXIF-rotated photos. The pipeline turns each into 8-bit RGB
(data/pipeline.py says how), so they are reported as counts, not problems. A file that
does not decode is a problem: training would stop on it.

Used by ``python -m data.prepare check LIST --decode``.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

KINDS = {  # kind -> how the report names it
    "cmyk": "CMYK",
    "grayscale": "grayscale",
    "png_as_jpeg": "PNG named .JPEG",
    "other_as_jpeg": "other format named .JPEG",
    "alpha": "RGBA (alpha dropped)",
    "16bit": "16-bit",
    "exif_rotated": "EXIF-rotated",
}
_JPEG_NAMES = (".jpeg", ".jpg")
_ORIENTATION = 0x0112
_CHUNK = 1024  # images in flight at once: memory stays flat on a 14M-line list


@dataclass
class ImageSurvey:
    decoded: int = 0
    kinds: Dict[str, List[int]] = field(default_factory=dict)  # kind -> line numbers
    undecodable: List[Tuple[int, str]] = field(default_factory=list)  # (line number, message)


def image_kinds(path: str) -> List[str]:
    """Decode `path` fully (an exception if it does not decode) and return its odd kinds."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()  # the whole image: a truncated file fails here, not at open
        kinds = []
        if os.path.splitext(path)[1].lower() in _JPEG_NAMES and im.format != "JPEG":
            kinds.append("png_as_jpeg" if im.format == "PNG" else "other_as_jpeg")
        mode = im.mode
        if mode == "CMYK":
            kinds.append("cmyk")
        if mode.startswith("I;16") or mode in ("I", "F"):
            kinds.append("16bit")
        elif mode in ("1", "L", "LA"):
            kinds.append("grayscale")
        if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
            kinds.append("alpha")
        if im.getexif().get(_ORIENTATION, 1) not in (0, 1):
            kinds.append("exif_rotated")
    return kinds


def _survey_one(item: Tuple[int, str]) -> Tuple[int, str, Optional[List[str]], Optional[str]]:
    lineno, path = item
    try:
        return lineno, path, image_kinds(path), None
    except Exception as e:  # any decoder failure is what we are looking for
        return lineno, path, None, f"{type(e).__name__}: {e}"


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def survey_images(items: Iterable[Tuple[int, str]], total: int, workers: int = 0,
                  progress: bool = True) -> ImageSurvey:
    """Decode each (line number, path) once on `workers` threads (Pillow decodes outside
    the GIL; 0: one per CPU), with a progress bar on stderr."""
    from tqdm import tqdm

    survey = ImageSurvey()
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool, \
            tqdm(total=total, unit="img", desc="decoding", disable=not progress) as bar:
        for chunk in _chunks(items, _CHUNK):
            for lineno, path, kinds, error in pool.map(_survey_one, chunk):
                bar.update(1)
                if error is not None:
                    survey.undecodable.append((lineno, f"undecodable image {path}: {error}"))
                    continue
                survey.decoded += 1
                for kind in kinds:
                    survey.kinds.setdefault(kind, []).append(lineno)
    return survey
