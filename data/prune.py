"""Write a coreset as data, for loaders that cannot filter by key: pruned WebDataset shards
or a pruned Hugging Face dataset holding only the kept samples.

    python -m data.prune --shards 'DATA/train-{0000..1023}.tar' --keys KEPT --output 'OUT/train-%05d.tar' \
        [--num-shards K]
    python -m data.prune --hf DATASET --keys KEPT --output OUT.parquet [--image-key image --label-key label]

KEPT: the kept keys, one per line (get_coreset.py on a history named by keys writes it).
Shards: each kept sample's members are copied byte for byte (headers included), in the
data's order, into K shards (default: the input's shard count scaled by the kept share)
whose sizes differ by at most one sample. HF: the kept rows, every column, in order, as
one parquet file (datasets.load_dataset("parquet", data_files=OUT) and DATA.FORMAT hf
read it). The output is written to temporary files, read back and compared with the input
(keys, labels, members' bytes), and only then renamed into place. Bad input (a key not in
the data, an output that exists) is one line and exit 2, with nothing written.
"""
import argparse
import hashlib
import os
import shutil
import sys
import tempfile
from typing import List, Optional, Sequence

import numpy as np

from dynunc.lists.keyed import DataFormatError
from data.shards import ShardSet, end_of_archive, scan_shard


def _kept_rows(source, keys_path: str) -> np.ndarray:
    """The rows of the keys in `keys_path` (DataFormatError naming a line whose key is not there)."""
    return source.samples(None).subset(keys_path).rows


def prune_shards(pattern: str, keys_path: str, output: str, num_shards: Optional[int] = None) -> List[str]:
    """Write the kept samples of the shards of `pattern` as shards named `output` % k."""
    if "%" not in output:
        raise DataFormatError(f"--output {output!r}: needs a %d field for the shard number (e.g. train-%05d.tar)")
    shards = ShardSet(pattern, "--shards", byte_ranges=True)
    rows = _kept_rows(shards, keys_path)
    k = num_shards or max(1, round(len(shards.paths) * len(rows) / len(shards)))
    if not 1 <= k <= len(rows):
        raise DataFormatError(f"--num-shards {k}: must be between 1 and the {len(rows)} kept samples")
    paths = [output % i for i in range(k)]
    inputs = {os.path.realpath(p) for p in shards.paths}
    for path in paths:
        if os.path.exists(path):
            raise DataFormatError(f"{path}: exists; give another --output (nothing was written)")
        if os.path.realpath(path) in inputs:
            raise DataFormatError(f"{path}: is an input shard")
    folder = os.path.dirname(os.path.abspath(paths[0]))
    os.makedirs(folder, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".prune-", dir=folder)
    try:
        parts = np.array_split(rows, k)
        written = []
        for i, part in enumerate(parts):
            path = os.path.join(tmp, f"{i}.tar")
            with open(path, "wb") as out:
                for row in part:
                    out.write(shards.sample_bytes(int(row)))
                out.write(end_of_archive())
                out.flush()
                os.fsync(out.fileno())
            written.append(path)
        for path, part in zip(written, parts):  # read back
            got = scan_shard(path)
            keys = bytes(got["key_blob"]).decode("utf-8").split("\n")[:-1]
            want = [shards.keys.key(int(r)) for r in part]
            if keys != want or got["label"].tolist() != shards.labels[part].tolist():
                raise RuntimeError(f"{path}: read back other keys or labels than written")
            with open(path, "rb") as f:
                for j, row in enumerate(part):
                    f.seek(int(got["sample_start"][j]))
                    if f.read(int(got["sample_end"][j] - got["sample_start"][j])) != shards.sample_bytes(int(row)):
                        raise RuntimeError(f"{path}: sample {want[j]!r} reads back other bytes than its source")
        for path, final in zip(written, paths):
            os.replace(path, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths


def prune_hf(path: str, keys_path: str, output: str, image_key: str = "image", label_key: str = "label") -> str:
    """Write the kept rows of the dataset at `path` (every column) as the parquet file `output`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data.hf_data import HfDataset

    data = HfDataset(path, image_key, label_key, "--hf")
    rows = _kept_rows(data, keys_path)
    if os.path.exists(output):
        raise DataFormatError(f"{output}: exists; give another --output (nothing was written)")
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(output)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)  # open()'s mode, not mkstemp's 0600
    try:
        writer = None
        for f, first in zip(data.files, data.firsts):
            local = rows[(rows >= first) & (rows < first + _rows_in(data, f))] - first
            if f.endswith(".parquet"):
                table = pq.read_table(f)
            else:
                table = pa.ipc.open_stream(pa.memory_map(f)).read_all()
            table = table.take(pa.array(local, type=pa.int64()))
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table.cast(writer.schema))
        writer.close()
        back = HfDataset(tmp, image_key, label_key, "--output")  # read back
        if len(back.labels) != len(rows) or back.labels.tolist() != data.labels[rows].tolist():
            raise RuntimeError(f"{output}: read back other labels than written")
        for j, row in enumerate(rows):
            if hashlib.sha256(back.read(j)).digest() != hashlib.sha256(data.read(int(row))).digest():
                raise RuntimeError(f"{output}: row {j} reads back other image bytes than {data.where(int(row))}")
        os.replace(tmp, output)
        tmp = None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return output


def _rows_in(data, f: str) -> int:
    i = data.files.index(f)
    ends = list(data.firsts[1:]) + [len(data.labels)]
    return int(ends[i] - data.firsts[i])


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data.prune", description=__doc__.splitlines()[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--shards", help="brace pattern of the input tar shards")
    source.add_argument("--hf", help="the input dataset: a save_to_disk folder or parquet files")
    p.add_argument("--keys", required=True, help="the kept keys, one per line")
    p.add_argument("--output", required=True, help="shards: a %%d pattern (OUT/train-%%05d.tar); hf: a .parquet file")
    p.add_argument("--num-shards", type=int, help="shards: how many to write (default: scaled from the input's)")
    p.add_argument("--image-key", default="image")
    p.add_argument("--label-key", default="label")
    args = p.parse_args(argv)
    try:
        if args.shards:
            paths = prune_shards(args.shards, args.keys, args.output, args.num_shards)
            print(f"wrote the kept samples to {len(paths)} shards, read back and checked: {paths[0]} .. {paths[-1]}")
        else:
            prune_hf(args.hf, args.keys, args.output, args.image_key, args.label_key)
            print(f"wrote the kept rows to {args.output}, read back and checked")
    except DataFormatError as e:
        p.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
