"""DATA.FORMAT wds and hf: the same samples as the folder tree (bytes, labels, order), shard
indexes built once and rebuilt when a shard changes, keys and coresets by key, pruned
shards and datasets, and bad shards or datasets refused in one line (exit 2, nothing
written under OUTPUT)."""
import io
import os
import tarfile

import numpy as np
import pytest

from conftest import ROOT, make_image_tree, run_main
from data.export import list_samples, to_hf, to_shards
from dynunc.lists.file_list import read_file_list
from data.hf_data import open_hf
from dynunc.lists.keyed import DataFormatError, KeyTable
from data.prune import main as prune_main
from data.reader import read_image_bytes
from data.shards import ShardSet, expand_braces, open_shards, scan_shard, shard_index_path, tar_member
from main import cli
from test_end_to_end import OPTS

pytestmark = pytest.mark.usefixtures("restore_root_logging")
CONFIG = os.path.join(ROOT, "configs", "demo-mnist.yaml")


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    """A 3 x 4 tree (and a 3 x 2 val tree) written as shards of 5 samples and as an HF
    dataset (save_to_disk and parquet)."""
    pytest.importorskip("datasets")
    root = tmp_path_factory.mktemp("formats")
    for split, per_class, seed in (("train", 4, 0), ("val", 2, 1)):
        make_image_tree(str(root / split), num_classes=3, per_class=per_class, seed=seed)
        samples = list_samples(str(root / split / "file_list.txt"))
        (root / "wds").mkdir(exist_ok=True)
        to_shards(samples, str(root / "wds" / f"{split}-%02d.tar"), 5)
        to_hf(samples, 3, folder=str(root / f"hf_{split}"), parquet=str(root / f"{split}.parquet"))
    return root


def open_all(root):
    return {"folder": read_file_list(str(root / "train" / "file_list.txt"), num_classes=3),
            "wds": open_shards(str(root / "wds" / "train-{00..02}.tar"), 3),
            "hf": open_hf(str(root / "hf_train"), "image", "label", 3),
            "parquet": open_hf(str(root / "train.parquet"), "image", "label", 3)}


def test_the_same_samples_in_every_format(formats):
    data = open_all(formats)
    folder = data["folder"]
    for name, samples in data.items():
        assert len(samples) == 12 and samples.labels.tolist() == folder.labels.tolist(), name
        for i in range(12):
            assert read_image_bytes(samples, i).tobytes() == read_image_bytes(folder, i).tobytes(), (name, i)
    assert data["wds"].key(5) == "c01/img_001" and data["hf"].key(5) == "5"
    assert data["wds"].where(5) == f"{formats}/wds/train-01.tar: key 'c01/img_001'"
    assert data["parquet"].where(5) == f"{formats}/train.parquet: row 5"


def test_brace_patterns():
    assert expand_braces("a-{00..02}.tar") == ["a-00.tar", "a-01.tar", "a-02.tar"]
    assert expand_braces("{x,y}-{8..10}") == ["x-8", "x-9", "x-10", "y-8", "y-9", "y-10"]
    assert expand_braces("plain.tar") == ["plain.tar"]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_shards_written_by_tarfile(tmp_path, fmt):
    """Members as Python's tarfile (webdataset's writer) lays them out: long names (pax or
    GNU headers), a directory entry, extra members, an upper-case extension."""
    deep = "d" * 60 + "/" + "e" * 30 if fmt != tarfile.USTAR_FORMAT else "dir"
    samples = [(f"{deep}/s{i}", b"IMG%d" % i * (100 + i), i % 3) for i in range(4)]
    path = str(tmp_path / "x.tar")
    with tarfile.open(path, "w", format=fmt) as t:
        t.addfile(tarfile.TarInfo("dir"), None) if fmt == tarfile.USTAR_FORMAT else None
        for key, image, label in samples:
            for ext, data in (("JPG", image), ("cls", str(label).encode()), ("json", b"{}")):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    ix = scan_shard(path)
    assert bytes(ix["key_blob"]).decode().split("\n")[:-1] == [k for k, _, _ in samples]
    assert ix["label"].tolist() == [0, 1, 2, 0]
    with open(path, "rb") as f:
        for j, (_, image, _) in enumerate(samples):
            f.seek(int(ix["image_offset"][j]))
            assert f.read(int(ix["image_size"][j])) == image


def test_shard_index_is_cached_and_rebuilt_when_the_shard_changes(tmp_path, monkeypatch):
    import data.shards as shards

    path = str(tmp_path / "s.tar")
    with open(path, "wb") as f:
        f.write(tar_member("a.png", b"x" * 10) + tar_member("a.cls", b"1") + bytes(1024))
    os.utime(path, ns=(10**18, 10**18))  # not racy
    scans = []
    real = shards.scan_shard
    monkeypatch.setattr(shards, "scan_shard", lambda p: scans.append(p) or real(p))
    assert shards.ShardSet(path).labels.tolist() == [1]
    assert shards.ShardSet(path).labels.tolist() == [1] and len(scans) == 1
    assert os.path.exists(shard_index_path(path))
    with open(path, "wb") as f:
        f.write(tar_member("b.png", b"y" * 10) + tar_member("b.cls", b"2") + bytes(1024))
    os.utime(path, ns=(10**18 + 1, 10**18 + 1))
    assert shards.ShardSet(path).labels.tolist() == [2] and len(scans) == 2
    index = shard_index_path(path)
    raw = bytearray(open(index, "rb").read())
    at = raw.find(b"b\n")  # the key blob's bytes, inside the zip: its CRC no longer matches
    raw[at] = ord("c")
    open(index, "wb").write(bytes(raw))
    assert shards.ShardSet(path).keys.keys() == ["b"] and len(scans) == 3


def test_key_table_text_is_sample_keys_and_finds_keys():
    table = KeyTable.from_keys(["b/1", "a", "zz"])
    assert table.text() == b"b/1\na\nzz\n" and table.keys() == ["b/1", "a", "zz"]
    assert table.find(["zz", "nope", "b/1"]).tolist() == [2, -1, 0]
    assert table.repeats() is None and KeyTable.from_keys(["x", "y", "x"]).repeats() == (0, 2)


# -----------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written
# -----------------------------------------------------------------------------
def _write_tar(path, members, end=True):
    with open(path, "wb") as f:
        for name, data in members:
            f.write(tar_member(name, data))
        if end:
            f.write(bytes(1024))


def _good(n, prefix="k"):
    return [m for i in range(n) for m in ((f"{prefix}{i}.png", b"\x89PNG" + bytes(20)), (f"{prefix}{i}.cls", b"0"))]


def _bad_cases(root):
    """name: (--opts, the line after 'error: ')."""
    bad = root / "bad"
    bad.mkdir(exist_ok=True)
    good = open(root / "wds" / "train-00.tar", "rb").read()
    ix = scan_shard(str(root / "wds" / "train-00.tar"))
    at, size = int(ix["image_offset"][1]), int(ix["image_size"][1])  # cut inside the second image
    (bad / "truncated.tar").write_bytes(good[:at + 7])
    _write_tar(bad / "no_image.tar", _good(1) + [("k9.json", b"{}"), ("k9.cls", b"1")])
    _write_tar(bad / "no_label.tar", _good(1) + [("k9.png", b"\x89PNG")])
    _write_tar(bad / "label.tar", _good(1) + [("k9.png", b"\x89PNG"), ("k9.cls", b"7")])
    _write_tar(bad / "dup-0.tar", _good(2))
    _write_tar(bad / "dup-1.tar", _good(3, "j") + _good(2)[2:])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"img": [b"x"], "label": [0]}), str(bad / "columns.parquet"))
    pq.write_table(pa.table({"image": [b"x", b"y"], "label": [0, 5]}), str(bad / "hf_label.parquet"))
    pq.write_table(pa.table({"image": [b"x", None], "label": [0, 1]}), str(bad / "hf_null.parquet"))
    wds, hf = ["DATA.FORMAT", "wds", "DATA.TRAIN_SHARDS"], ["DATA.FORMAT", "hf", "DATA.HF_TRAIN"]
    return {
        "truncated tar": (wds + [f"{bad}/truncated.tar"], f"{bad}/truncated.tar: truncated tar: member "
                          f"'c00/img_001.jpg' needs {size} bytes at byte {at}, the file ends at byte {at + 7}"),
        "sample without image": (wds + [f"{bad}/no_image.tar"], f"{bad}/no_image.tar: sample 'k9' has no image "
                                 "member (jpg|jpeg|png|webp); members: cls, json"),
        "sample without label": (wds + [f"{bad}/no_label.tar"], f"{bad}/no_label.tar: sample 'k9' has no label "
                                 "member (k9.cls)"),
        "label out of range": (wds + [f"{bad}/label.tar"], f"{bad}/label.tar: key 'k9': label 7 is outside [0, 3)"),
        "pattern matching nothing": (wds + [f"{bad}/none-{{0..3}}.tar"], f"DATA.TRAIN_SHARDS: {bad}/none-0.tar "
                                     f"matches no file (from the pattern {bad}/none-{{0..3}}.tar)"),
        "two shards with the same key": (wds + [f"{bad}/dup-{{0..1}}.tar"], f"{bad}/dup-0.tar and {bad}/dup-1.tar: "
                                         "both hold key 'k1' (keys must be unique)"),
        "parquet without the named column": (hf + [f"{bad}/columns.parquet"], f"{bad}/columns.parquet: no column "
                                             "'image' (DATA.HF_IMAGE_KEY); columns: img, label"),
        "hf label out of range": (hf + [f"{bad}/hf_label.parquet"], f"{bad}/hf_label.parquet: row 1: label 5 is "
                                  "outside [0, 3)"),
        "hf row without image": (hf + [f"{bad}/hf_null.parquet"], f"{bad}/hf_null.parquet: row 1: no image bytes "
                                 "in column 'image'"),
    }


BAD = ["truncated tar", "sample without image", "sample without label", "label out of range",
       "pattern matching nothing", "two shards with the same key", "parquet without the named column",
       "hf label out of range", "hf row without image"]


@pytest.mark.parametrize("name", BAD)
def test_bad_shards_and_datasets(formats, tmp_path, name):
    opts, expected = _bad_cases(formats)[name]
    out = str(tmp_path / "out")
    code, stdout, stderr = run_main(lambda argv: cli(argv, produce=True), [
        "--config", CONFIG, "--output", out, "--opts", *OPTS, "TRAIN.EPOCHS", "1", *opts])
    assert code == 2 and stderr == f"main_and_produce.py: error: {expected}\n", stderr
    assert "Traceback" not in stdout and not os.path.exists(out)
    bad = [o for o in opts if o.endswith(".tar")]
    assert not (bad and os.path.exists(bad[0] + ".keys.npz"))  # no index of a bad shard


def test_a_coreset_key_not_in_the_shards_is_refused(formats, tmp_path):
    (tmp_path / "kept.txt").write_text("c00/img_000\nc09/img_000\n")
    out = str(tmp_path / "out")
    code, _, stderr = run_main(cli, ["--config", CONFIG, "--output", out, "--coreset", str(tmp_path / "kept.txt"),
                                     "--opts", *OPTS, "DATA.FORMAT", "wds", "DATA.TRAIN_SHARDS",
                                     f"{formats}/wds/train-{{00..02}}.tar"])
    assert code == 2 and not os.path.exists(out)
    assert stderr == (f"main.py: error: {tmp_path}/kept.txt:2: key 'c09/img_000' is not in "
                      f"{formats}/wds/train-{{00..02}}.tar\n")


def test_coreset_by_keys_is_the_kept_samples_in_the_data_order(formats, tmp_path):
    (tmp_path / "kept.txt").write_text("c02/img_001\nc00/img_003\n")
    sub = open_shards(str(formats / "wds" / "train-{00..02}.tar"), 3).subset(str(tmp_path / "kept.txt"))
    assert sub.rows.tolist() == [3, 9] and sub.labels.tolist() == [0, 2] and sub.files == ["c00/img_003", "c02/img_001"]


# -----------------------------------------------------------------------------
# Pruned data
# -----------------------------------------------------------------------------
def test_pruned_shards_hold_the_kept_samples_unchanged_in_balanced_shards(formats, tmp_path):
    pattern = str(formats / "wds" / "train-{00..02}.tar")
    whole = ShardSet(pattern, byte_ranges=True)
    kept = [whole.keys.key(i) for i in (0, 2, 3, 5, 7, 8, 11)]
    (tmp_path / "kept.txt").write_text("".join(k + "\n" for k in reversed(kept)))
    out = str(tmp_path / "p" / "t-%d.tar")
    code, stdout, stderr = run_main(prune_main, ["--shards", pattern, "--keys", tmp_path / "kept.txt", "--output", out,
                                                 "--num-shards", "3"])
    assert code == 0, stderr
    pruned = ShardSet(str(tmp_path / "p" / "t-{0..2}.tar"), byte_ranges=True)
    assert pruned.keys.keys() == kept
    assert [int((pruned.shard_of == s).sum()) for s in range(3)] == [3, 2, 2]
    for j, i in enumerate((0, 2, 3, 5, 7, 8, 11)):
        assert pruned.sample_bytes(j) == whole.sample_bytes(i) and pruned.labels[j] == whole.labels[i]
    assert sorted(os.listdir(tmp_path / "p")) == ["t-0.tar", "t-1.tar", "t-2.tar"] + [
        f"t-{s}.tar.keys.npz" for s in range(3) if os.path.exists(tmp_path / "p" / f"t-{s}.tar.keys.npz")]
    # Again: the outputs exist, refused, nothing changed.
    code, _, stderr = run_main(prune_main, ["--shards", pattern, "--keys", tmp_path / "kept.txt", "--output", out])
    assert code == 2 and stderr.splitlines()[-1] == f"python -m data.prune: error: {tmp_path}/p/t-0.tar: exists; " \
        "give another --output (nothing was written)"


@pytest.mark.parametrize("source", ["hf_train", "train.parquet"])
def test_pruned_hf_dataset(formats, tmp_path, source):
    datasets = pytest.importorskip("datasets")
    (tmp_path / "kept.txt").write_text("1\n4\n10\n")
    out = str(tmp_path / "kept.parquet")
    code, _, stderr = run_main(prune_main, ["--hf", formats / source, "--keys", tmp_path / "kept.txt", "--output", out])
    assert code == 0, stderr
    whole = open_hf(str(formats / source), "image", "label", 3)
    pruned = open_hf(out, "image", "label", 3)
    assert pruned.labels.tolist() == [whole.labels[i] for i in (1, 4, 10)]
    assert [pruned.read(j).tobytes() for j in range(3)] == [whole.read(i).tobytes() for i in (1, 4, 10)]
    ds = datasets.load_dataset("parquet", data_files=out, split="train", cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 3 and isinstance(ds.features["image"], datasets.Image)
    (tmp_path / "bad.txt").write_text("1\n99\n")
    code, _, stderr = run_main(prune_main, ["--hf", formats / source, "--keys", tmp_path / "bad.txt", "--output",
                                            str(tmp_path / "other.parquet")])
    assert code == 2 and "bad.txt:2: key '99' is not in" in stderr and not os.path.exists(tmp_path / "other.parquet")


def test_open_shards_names_the_pattern_when_empty():
    with pytest.raises(DataFormatError, match="DATA.TRAIN_SHARDS is empty"):
        open_shards("", 3)


def test_sample_keys_of_a_keyed_history_are_checked_on_resume(tmp_path):
    import torch

    from dynunc.history import read_fingerprint, read_sample_keys
    from dynunc.training.recorder import Recorder, RecorderError

    keys = KeyTable.from_keys(["a", "b", "c"])
    rec = Recorder(str(tmp_path), 3, keys=keys, device=torch.device("cpu"))
    rec.update(torch.arange(3), torch.zeros(3, 2), torch.zeros(3, dtype=torch.int64))
    rec.end_epoch(0)
    hdir = str(tmp_path / "pred_prob_history")
    assert read_sample_keys(hdir, 3) == ["a", "b", "c"]
    assert read_fingerprint(hdir) == keys.fingerprint("sample_keys.txt")
    with pytest.raises(RecorderError, match="recorded with other sample keys"):
        Recorder(str(tmp_path), 3, keys=KeyTable.from_keys(["a", "c", "b"]), start_epoch=1, device=torch.device("cpu"))
    with pytest.raises(RecorderError, match="name their samples by keys"):
        Recorder(str(tmp_path), 3, start_epoch=1, device=torch.device("cpu"))
    Recorder(str(tmp_path), 3, keys=keys, start_epoch=1, device=torch.device("cpu"))  # the same keys resume
    assert read_sample_keys(hdir, 3) == ["a", "b", "c"]


def test_get_coreset_on_a_keyed_history_writes_kept_keys_and_checks_the_key_table(tmp_path):
    import get_coreset
    from dynunc.history import history_dir, sample_keys_path, write_epoch, write_fingerprint, write_sample_keys

    hdir = history_dir(str(tmp_path / "run"))
    os.makedirs(hdir)
    rng = np.random.default_rng(0)
    keys = [f"shard-{i // 4}/{i:04d}" for i in range(12)]
    for epoch in range(3):
        prob = rng.random(12).astype(np.float32)
        write_epoch(hdir, epoch, prob=prob, correct=(prob > 0.5).astype(np.int8))
    write_fingerprint(hdir, write_sample_keys(hdir, keys))
    args = ["--input", tmp_path / "run", "--fraction", "0.5", "--window", "2", "--output", tmp_path / "kept.txt"]
    code, _, stderr = run_main(get_coreset.main, args)
    assert code == 0, stderr
    kept = open(tmp_path / "kept.txt").read().splitlines()
    scores = np.load(str(tmp_path / "kept.txt.scores.npy"))
    assert len(kept) == 6 and kept == [keys[i] for i in sorted(np.argsort(-scores, kind="stable")[:6])]
    code, _, stderr = run_main(get_coreset.main, args[:2] + ["--class-balanced"] + args[2:])
    assert code == 2 and "--class-balanced needs --dataset_file_list" in stderr, stderr
    with open(sample_keys_path(hdir), "a") as f:  # a key more than the history has samples
        f.write("extra\n")
    code, _, stderr = run_main(get_coreset.main, args)
    assert code == 2 and "13 keys, but the history has 12 samples" in stderr, stderr
    with open(sample_keys_path(hdir), "w") as f:  # the same keys in another order: not the ones recorded
        f.write("".join(k + "\n" for k in keys[::-1]))
    code, _, stderr = run_main(get_coreset.main, args)
    assert code == 2 and "is not the file list the history was recorded on" in stderr, stderr
