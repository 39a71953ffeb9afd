"""A Hugging Face dataset on local disk: a ``save_to_disk`` folder (arrow files named by
its state.json) or parquet files (a file, a folder of them, or a glob pattern). Never a
hub download: the path must exist.

The image column (DATA.HF_IMAGE_KEY, default ``image``) holds encoded bytes, as the
datasets ``Image`` feature stores them (a struct of bytes and path) or as plain binary;
the label column (DATA.HF_LABEL_KEY, default ``label``) integers (``ClassLabel``). A
sample's key is its row number over the dataset's files in order.

Arrow files are memory-mapped and read in place. Parquet is compressed by row group, which
random access would decompress again for every image, so each parquet file is converted
once to an arrow file of the two columns, kept beside it (``<file>.dynunc.arrow``, or in
``$XDG_CACHE_HOME/dynunc/hf_arrow/``) and used again while the parquet file's size and
modification time are the ones recorded in it.

A bad dataset stops the run before anything is written, in one line naming the file and
the row: a missing column, a row without image bytes or label, a label out of range.
"""
import glob
import json
import os
import time
from typing import List, Optional, Tuple

import numpy as np

from dynunc.lists.index import RACY_SECONDS, index_location
from dynunc.lists.keyed import DataFormatError, KeyedSamples, KeyTable
from dynunc.io import atomic_open

ARROW_SUFFIX = ".dynunc.arrow"
_IDENTITY = b"dynunc_source"


def _pa():
    try:
        import pyarrow
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise DataFormatError("DATA.FORMAT hf needs pyarrow (pip install pyarrow)") from None
    return pyarrow


def dataset_files(path: str, what: str = "DATA.HF_TRAIN") -> Tuple[str, List[str]]:
    """("arrow" | "parquet", the files in order)."""
    if not path:
        raise DataFormatError(f"{what} is empty: give a save_to_disk folder or parquet files")
    if os.path.isdir(path):
        state = os.path.join(path, "state.json")
        if os.path.isfile(state):
            try:
                with open(state, encoding="utf-8") as f:
                    names = [d["filename"] for d in json.load(f)["_data_files"]]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise DataFormatError(f"{state}: not a datasets save_to_disk state file: {e}") from None
            return "arrow", [os.path.join(path, n) for n in names]
        if os.path.isfile(os.path.join(path, "dataset_dict.json")):
            raise DataFormatError(f"{what}: {path} is a DatasetDict; name one split's folder (e.g. {path}/train)")
        found = sorted(glob.glob(os.path.join(path, "*.parquet")))
    elif glob.has_magic(path):
        found = sorted(glob.glob(path))
    else:
        found = [path] if os.path.isfile(path) else []
    if not found:
        raise DataFormatError(f"{what}: {path} matches no save_to_disk folder or parquet file")
    return "parquet", found


def _check_columns(schema, where: str, image_key: str, label_key: str) -> None:
    for key, flag in ((image_key, "DATA.HF_IMAGE_KEY"), (label_key, "DATA.HF_LABEL_KEY")):
        if schema.get_field_index(key) < 0:
            raise DataFormatError(f"{where}: no column {key!r} ({flag}); columns: {', '.join(schema.names)}")


def _parquet_as_arrow(path: str, image_key: str, label_key: str) -> Tuple[str, bool]:
    """(the arrow file holding `path`'s two columns: the cached one, or a new one; whether
    it is this process's own temporary file, to unlink once mapped)."""
    pa = _pa()
    st = os.stat(path)
    identity = f"{st.st_size} {st.st_mtime_ns} {image_key} {label_key}".encode()
    location = index_location(path, suffix=ARROW_SUFFIX, cache_name="hf_arrow")
    if location is not None and os.path.exists(location):
        try:
            with pa.memory_map(location) as source:
                meta = pa.ipc.open_file(source).schema.metadata or {}
            if meta.get(_IDENTITY) == identity:
                return location, False
        except (OSError, pa.ArrowInvalid):
            pass
    try:
        pf = pa.parquet.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise DataFormatError(f"{path}: cannot be read as parquet: {e}") from None
    _check_columns(pf.schema_arrow, path, image_key, label_key)
    schema = pa.schema([pf.schema_arrow.field(image_key), pf.schema_arrow.field(label_key)],
                       metadata={_IDENTITY: identity})
    racy = st.st_mtime_ns > time.time_ns() - int(RACY_SECONDS * 1e9)
    target = location if location is not None and not racy else None
    if target is None:  # this process only
        import tempfile
        fd, target = tempfile.mkstemp(prefix="hf_arrow.", suffix=".arrow")
        os.close(fd)
    with atomic_open(target, "wb") as out:
        with pa.ipc.new_file(out, schema) as writer:
            for batch in pf.iter_batches(columns=[image_key, label_key], batch_size=1024):
                writer.write_batch(pa.record_batch(batch.columns, schema=schema))
    return target, target != location


class _Column:
    """Random access to one file's image bytes, in place in its memory map."""

    def __init__(self, pa, table, image_key: str):
        self.parts = []  # (first row, offsets, data)
        column = table.column(image_key)
        row = 0
        for chunk in column.chunks:
            if pa.types.is_struct(chunk.type):
                names = [chunk.type.field(i).name for i in range(chunk.type.num_fields)]
                if "bytes" not in names:
                    raise TypeError(f"an image struct without a 'bytes' field ({', '.join(names)})")
                values = chunk.flatten()[names.index("bytes")]
            else:
                values = chunk
            if not (pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type)):
                raise TypeError(f"holds {values.type}, not encoded image bytes")
            width = np.int64 if pa.types.is_large_binary(values.type) else np.int32
            buffers = values.buffers()
            offsets = np.frombuffer(buffers[1], dtype=width)[values.offset:values.offset + len(values) + 1]
            data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.empty(0, np.uint8)
            self.parts.append((row, offsets, data, values))
            row += len(values)
        self.firsts = np.array([p[0] for p in self.parts], dtype=np.int64)

    def read(self, row: int) -> np.ndarray:
        part = self.parts[int(np.searchsorted(self.firsts, row, side="right")) - 1]
        j = row - part[0]
        return part[2][int(part[1][j]):int(part[1][j + 1])]

    def null_rows(self) -> np.ndarray:
        return np.concatenate([np.flatnonzero(np.asarray(p[3].is_null())) + p[0] for p in self.parts]
                              or [np.empty(0, np.int64)])


class HfDataset:
    def __init__(self, path: str, image_key: str = "image", label_key: str = "label", what: str = "DATA.HF_TRAIN"):
        pa = _pa()
        self.path = path
        kind, self.files = dataset_files(path, what)
        self.columns, labels, self.firsts = [], [], []
        row = 0
        for f in self.files:
            source, temporary = (f, False) if kind == "arrow" else _parquet_as_arrow(f, image_key, label_key)
            try:
                mapped = pa.memory_map(source)
                table = (pa.ipc.open_stream(mapped) if kind == "arrow" else pa.ipc.open_file(mapped)).read_all()
            except (OSError, pa.ArrowInvalid) as e:
                raise DataFormatError(f"{f}: cannot be read as an arrow file: {e}") from None
            finally:
                if temporary:
                    os.unlink(source)  # the mapping keeps it readable
            _check_columns(table.schema, f, image_key, label_key)
            try:
                column = _Column(pa, table, image_key)
            except TypeError as e:
                raise DataFormatError(f"{f}: column {image_key!r} {e}") from None
            nulls = column.null_rows()
            if len(nulls):
                raise DataFormatError(f"{f}: row {int(nulls[0])}: no image bytes in column {image_key!r}")
            label_column = table.column(label_key)
            if label_column.null_count:
                bad = int(np.flatnonzero(np.asarray(label_column.is_null()))[0])
                raise DataFormatError(f"{f}: row {bad}: no label in column {label_key!r}")
            if not pa.types.is_integer(label_column.type):
                raise DataFormatError(f"{f}: column {label_key!r} holds {label_column.type}, not integer labels")
            labels.append(np.asarray(label_column.to_numpy(), dtype=np.int64))
            self.columns.append(column)
            self.firsts.append(row)
            row += table.num_rows
        self.firsts = np.array(self.firsts, dtype=np.int64)
        self.raw_labels = np.concatenate(labels) if labels else np.empty(0, np.int64)
        if len(self.raw_labels) == 0:
            raise DataFormatError(f"{what}: {path} holds no rows")
        self.labels = np.clip(self.raw_labels, -1, 2**31 - 1).astype(np.int32)
        self.keys = KeyTable.from_keys([str(i) for i in range(len(self.labels))])

    def _locate(self, row: int) -> Tuple[int, int]:
        f = int(np.searchsorted(self.firsts, row, side="right")) - 1
        return f, row - int(self.firsts[f])

    def where(self, row: int) -> str:
        f, local = self._locate(row)
        return f"{self.files[f]}: row {local}"

    def read(self, row: int) -> np.ndarray:
        f, local = self._locate(row)
        data = self.columns[f].read(local)
        if data.size == 0:
            raise DataFormatError(f"{self.where(row)}: empty image bytes")
        return data

    def samples(self, num_classes: Optional[int]) -> KeyedSamples:
        samples = KeyedSamples(self.path, self.keys, self.labels, self.read, self.where)
        big = np.flatnonzero(self.raw_labels != self.labels)
        if len(big):
            raise DataFormatError(f"{self.where(int(big[0]))}: label {int(self.raw_labels[big[0]])} is outside "
                                  f"[0, 2**31)")
        samples.check_labels(num_classes)
        return samples


def open_hf(path: str, image_key: str, label_key: str, num_classes: Optional[int],
            what: str = "DATA.HF_TRAIN") -> KeyedSamples:
    return HfDataset(path, image_key, label_key, what).samples(num_classes)
