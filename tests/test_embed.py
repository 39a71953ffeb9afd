"""embed.py: a pretrained timm model's features of a file list, through the produce run's
eval view on the DALI pipeline, in the history's embed_{epoch}.npy format, read by
get_coreset.py and report.py with --embeddings. The model is timm's test_resnet with
weights saved here (nothing is downloaded)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, make_image_tree, run_main, write_full_history

CONFIG = os.path.join(ROOT, "configs", "demo-mnist.yaml")
MODEL = "test_resnet"  # timm's 0.4M-parameter ResNet for tests; mean and std 0.5 (not ImageNet's)
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def save_weights(path, seed=0, name=MODEL, wrap=None):
    """timm `name`'s randomly initialised weights, classifier included (10 classes), as a
    state dict (or a checkpoint holding it under `wrap`, DDP's module. prefix added)."""
    import timm

    torch.manual_seed(seed)
    state = timm.create_model(name, num_classes=10).state_dict()
    if wrap:
        state = {wrap: {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
    torch.save(state, path)
    return path


def data_opts(train, val=None):
    opts = ["DATA.DATA_PATH_TRAIN", str(train), "MODEL.NUM_CLASSES", "3", "DATA.NUM_WORKERS", "1",
            "DATA.BATCH_SIZE_VAL", "4"]
    return opts + (["DATA.DATA_PATH_VAL", str(val)] if val else [])


def embed_cmd(weights, output, opts, *extra, nproc=1):
    args = ["--config", CONFIG, "--model", MODEL, "--weights", str(weights), "--img-size", "32", "--output",
            str(output), *extra, "--opts", *opts]
    script = os.path.join(ROOT, "embed.py")
    if nproc == 1:
        return [sys.executable, script, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script, *args]


def run(cmd):
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """A 3 x 10 train tree, a 3 x 5 val tree, saved weights, and embed.py's output."""
    root = tmp_path_factory.mktemp("embed")
    make_image_tree(str(root / "train"), per_class=10, seed=0)
    make_image_tree(str(root / "val"), per_class=5, seed=1)
    weights = save_weights(str(root / "weights.pth"))
    out = root / "emb"
    run(embed_cmd(weights, out, data_opts(root / "train", root / "val")))
    return dict(root=root, weights=weights, out=out, list=root / "train" / "file_list.txt",
                val_list=root / "val" / "file_list.txt")


def pil_view(path, size=32):
    """The eval view written again with Pillow: shorter side to `size` (bilinear, the
    config's interpolation), centre crop, the model's normalisation (mean = std = 0.5)."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR)
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    pixels = np.asarray(image.crop((left, top, left + size, top + size)), np.float32) / 255.0
    return torch.from_numpy((pixels - 0.5) / 0.5).permute(2, 0, 1)


def model_features(weights, root, list_path):
    import timm

    model = timm.create_model(MODEL, num_classes=0)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
    model.eval()
    with open(list_path) as f:
        names = [line.split()[0] for line in f if line.strip()]
    images = torch.stack([pil_view(os.path.join(root, n.lstrip("/"))) for n in names])
    with torch.no_grad():
        return model(images).numpy()


def cosines(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_rows_are_the_models_features_of_each_line_in_its_own_normalisation(embedded):
    out = embedded["out"]
    train = np.load(out / "embed_0.npy")
    val = np.load(out / "val_embed_0.npy")
    assert train.dtype == np.float16 and train.shape == (30, 96) and val.shape == (15, 96)
    # Independent: Pillow's resize and crop, the model's own mean and std. Two resamplers
    # of a 24 x 20 image to 32 px differ by a pixel's rounding, hence a cosine, not equality.
    expected = model_features(embedded["weights"], embedded["root"] / "train", embedded["list"])
    assert cosines(train, expected).min() > 0.99
    expected_val = model_features(embedded["weights"], embedded["root"] / "val", embedded["val_list"])
    assert cosines(val, expected_val).min() > 0.99
    # Each row is its own line's: the nearest Pillow row of every DALI row is that line's.
    sims = (train / np.linalg.norm(train.astype(np.float64), axis=1, keepdims=True)) @ (
        expected / np.linalg.norm(expected, axis=1, keepdims=True)).T
    assert (sims.argmax(1) == np.arange(30)).all()
    described = json.loads((out / "embedder.json").read_text())
    assert described["model"] == MODEL and described["mean"] == [0.5, 0.5, 0.5] and described["img_size"] == 32
    assert described["train"]["entries"] == 30 and described["val"]["entries"] == 15
    assert described["classifier_keys_dropped"] == 2  # fc.weight, fc.bias
    assert json.loads((out / "file_list.json").read_text())["entries"] == 30


def test_renormalisation_takes_the_pipelines_imagenet_values_to_the_models():
    from embed import renormalise
    from data.pipeline import IMAGENET_MEAN, IMAGENET_STD
    from models.timm_embedder import Embedder

    embedder = Embedder(model=None, name="x", mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), input_size=32, dropped=[])
    scale, shift = renormalise(embedder, torch.device("cpu"))
    pixels = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    piped = (pixels * 255 - torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    wanted = (pixels - torch.tensor([0.5, 0.4, 0.3], dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        [0.2, 0.25, 0.3], dtype=torch.float64).view(1, 3, 1, 1)
    torch.testing.assert_close(piped * scale.double() + shift.double(), wanted, rtol=1e-6, atol=1e-6)


def test_weights_in_a_checkpoint_or_safetensors_load_the_same(tmp_path):
    from safetensors.torch import save_file

    from models.timm_embedder import build_embedder

    plain = build_embedder(MODEL, save_weights(str(tmp_path / "plain.pth")), {})
    wrapped = build_embedder(MODEL, save_weights(str(tmp_path / "ckpt.pth"), wrap="model"), {})
    state = torch.load(tmp_path / "plain.pth", weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    safe = build_embedder(MODEL, str(tmp_path / "w.safetensors"), {})
    for other in (wrapped, safe):
        for (k, a), (_, b) in zip(plain.model.state_dict().items(), other.model.state_dict().items()):
            assert torch.equal(a, b), k
    assert plain.dropped == ["fc.bias", "fc.weight"] and plain.mean == (0.5, 0.5, 0.5) and plain.input_size == 160


def test_two_processes_write_what_one_writes(embedded, tmp_path):
    out = tmp_path / "emb2"
    run(embed_cmd(embedded["weights"], out, data_opts(embedded["root"] / "train", embedded["root"] / "val"), nproc=2))
    for name in ("embed_0.npy", "val_embed_0.npy"):
        one, two = np.load(embedded["out"] / name), np.load(out / name)
        # the same kernels on other batches (each rank's own): float16 rounding apart at most
        np.testing.assert_allclose(two.astype(np.float32), one.astype(np.float32), rtol=2e-3,
                                   atol=2e-3 * float(np.abs(one).max()))
    assert not [p for p in os.listdir(out) if ".part" in p]  # the ranks' parts merged and removed
    assert json.loads((out / "embedder.json").read_text())["run"]["processes"] == 2


def refused(args):
    import embed

    code, _, err = run_main(embed.cli, args)
    lines = [line for line in err.splitlines() if line.startswith("embed.py: error:")]
    assert code == 2 and len(lines) == 1, err
    return lines[0]


def test_bad_input_is_one_line_and_exit_2(embedded, tmp_path, restore_root_logging):
    opts = data_opts(embedded["root"] / "train")
    base = ["--config", CONFIG, "--img-size", "32", "--opts", *opts]
    weights = embedded["weights"]
    line = refused(["--model", "no_such_net", "--weights", weights, "--output", tmp_path / "a", *base])
    assert "--model no_such_net" in line
    convnext = save_weights(str(tmp_path / "convnext.pth"), name="test_convnext")
    line = refused(["--model", MODEL, "--weights", convnext, "--output", tmp_path / "a", *base])
    assert f"--weights {convnext} do not fit timm's {MODEL}" in line and "lack" in line
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    line = refused(["--model", MODEL, "--weights", tmp_path / "junk.pth", "--output", tmp_path / "a", *base])
    assert "cannot be read as a state dict" in line
    line = refused(["--model", MODEL, "--weights", tmp_path / "none.pth", "--output", tmp_path / "a", *base])
    assert "--weights" in line and "none.pth" in line
    line = refused(["--model", MODEL, "--weights", weights, "--output", tmp_path / "a", "--embed-dim", "0",
                            *base])
    assert "--embed-dim" in line
    line = refused(["--model", "test_convnext", "--weights", convnext, "--output", tmp_path / "a",
                            "--config", CONFIG, "--img-size", "8", "--opts", *opts])  # too small for its 4 stages
    assert "--model test_convnext cannot embed a 8 x 8 view" in line
    # a folder holds one embedding: other weights (or another list) into it are refused, untouched
    other = save_weights(str(tmp_path / "other.pth"), seed=1)
    before = (embedded["out"] / "embed_0.npy").read_bytes()
    line = refused(["--model", MODEL, "--weights", other, "--output", embedded["out"], "--config", CONFIG,
                            "--img-size", "32", "--opts", *data_opts(embedded["root"] / "train", embedded["root"] / "val")])
    assert "weights_sha256" in line and "another --output" in line
    assert (embedded["out"] / "embed_0.npy").read_bytes() == before
    assert not (tmp_path / "a").exists()


def test_get_coreset_reads_the_embeddings_of_embed_py(embedded, tmp_path):
    """A history without embeddings of its own: dedup and every embedding method read
    embed.py's, and say so."""
    from dynunc.scoring.geometry import kcenter_scores

    n = 30
    run_dir = tmp_path / "run"
    write_full_history(embedded["list"], run_dir, np.linspace(0.05, 0.95, n), 4, np.random.default_rng(0))
    out = tmp_path / "{method}_{fraction}.txt"
    proc = run([sys.executable, "get_coreset.py", "--input", str(run_dir), "--embeddings", str(embedded["out"]),
                "--dataset_file_list", str(embedded["list"]), "--method", "prototype", "moderate", "kcenter", "d2",
                "--fraction", "0.5", "--window", "2", "--dedup", "1", "--output", str(out)])
    assert f"test_resnet ({embedded['weights']}) at 32 px" in proc.stderr
    assert f"in {embedded['out']}" in proc.stdout  # the dedup line says whose embeddings it read
    for method in ("prototype", "moderate", "kcenter", "d2"):
        with open(tmp_path / f"{method}_0.5.txt") as f:
            assert len(f.readlines()) == 15
    scores = np.load(tmp_path / "kcenter_all.txt.scores.npy")
    np.testing.assert_array_equal(scores, kcenter_scores(np.load(embedded["out"] / "embed_0.npy"), 0))


def test_embeddings_of_another_list_are_refused(embedded, tmp_path):
    run_dir = tmp_path / "run"
    make_image_tree(str(tmp_path / "other"), per_class=10, fmt="PNG")  # 30 other lines: *.png
    other_list = tmp_path / "other" / "file_list.txt"
    write_full_history(other_list, run_dir, np.linspace(0.05, 0.95, 30), 3, np.random.default_rng(0))
    proc = subprocess.run([sys.executable, "get_coreset.py", "--input", str(run_dir), "--embeddings",
                           str(embedded["out"]), "--dataset_file_list", str(other_list), "--method", "kcenter",
                           "--fraction", "0.5", "--output", str(tmp_path / "c.txt")],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert f"the embeddings in {embedded['out']} are of {embedded['list']}" in proc.stderr
    assert not (tmp_path / "c.txt").exists()


def test_report_leakage_and_dedup_read_the_embeddings_of_embed_py(embedded, tmp_path):
    run_dir = tmp_path / "run"
    write_full_history(embedded["list"], run_dir, np.linspace(0.05, 0.95, 30), 4, np.random.default_rng(0))
    page = tmp_path / "page"
    run([sys.executable, "report.py", "--input", str(run_dir), "--embeddings", str(embedded["out"]),
         "--dataset_file_list", str(embedded["list"]), "--method", "dynunc", "kcenter", "--fraction", "0.5",
         "--window", "2", "--dedup", "1", "--leakage", "0.5", "--val_file_list", str(embedded["val_list"]),
         "--output", str(page)])
    numbers = json.loads((page / "report.json").read_text())
    for section in ("dedup", "leakage"):
        assert numbers[section]["source"].startswith(f"the embeddings in {embedded['out']} (embed.py: the pooled "
                                                     f"features of {MODEL}")
    html = (page / "index.html").read_text()
    assert f"features of {MODEL}" in html
    assert (page / "leakage.csv").read_text().startswith("val_index,")


def test_leakage_refuses_a_validation_list_other_than_the_one_embedded(embedded, tmp_path):
    run_dir = tmp_path / "run"
    write_full_history(embedded["list"], run_dir, np.linspace(0.05, 0.95, 30), 3, np.random.default_rng(0))
    make_image_tree(str(tmp_path / "val"), per_class=5, fmt="PNG")  # 15 lines, as the embedded one, other names
    proc = subprocess.run([sys.executable, "report.py", "--input", str(run_dir), "--embeddings", str(embedded["out"]),
                           "--dataset_file_list", str(embedded["list"]), "--method", "dynunc", "--fraction", "0.5",
                           "--window", "2", "--leakage", "0.5", "--val_file_list", str(tmp_path / "val" / "file_list.txt"),
                           "--output", str(tmp_path / "page")], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert f"is not the validation list embedded in {embedded['out']}" in proc.stderr


def test_shards_are_embedded_by_key_and_read_by_a_keyed_history(embedded, tmp_path):
    """DATA.FORMAT wds: the rows follow the shards' samples, sample_keys.txt names them, and
    a history recorded on the same shards (named by the same keys) reads them."""
    import get_coreset
    from data.export import list_samples, to_shards
    from dynunc.history import history_dir, write_epoch, write_fingerprint, write_sample_keys

    to_shards(list_samples(str(embedded["list"])), str(tmp_path / "train-%02d.tar"), 12)
    out = tmp_path / "emb"
    run(embed_cmd(embedded["weights"], out, data_opts("", None) + ["DATA.FORMAT", "wds", "DATA.TRAIN_SHARDS",
                                                                   str(tmp_path / "train-{00..02}.tar")]))
    keys = (out / "sample_keys.txt").read_text().splitlines()
    assert len(keys) == 30 and keys[0] == "c00/img_000"
    # the shards hold the tree's images in the list's order: the rows are the folder run's
    np.testing.assert_array_equal(np.load(out / "embed_0.npy"), np.load(embedded["out"] / "embed_0.npy"))
    hdir = history_dir(str(tmp_path / "run"))
    os.makedirs(hdir)
    for epoch in range(3):
        prob = np.random.default_rng(epoch).random(30).astype(np.float32)
        write_epoch(hdir, epoch, prob=prob, correct=(prob > 0.5).astype(np.int8))
    write_fingerprint(hdir, write_sample_keys(hdir, keys))
    code, _, stderr = run_main(get_coreset.main, ["--input", tmp_path / "run", "--embeddings", out, "--method",
                                                  "kcenter", "--fraction", "0.5", "--output", tmp_path / "kept.txt"])
    assert code == 0, stderr
    kept = (tmp_path / "kept.txt").read_text().splitlines()
    assert len(kept) == 15 and set(kept) <= set(keys)
    write_fingerprint(hdir, write_sample_keys(hdir, keys[::-1]))  # other keys: not the samples embedded
    code, _, stderr = run_main(get_coreset.main, ["--input", tmp_path / "run", "--embeddings", out, "--method",
                                                  "kcenter", "--fraction", "0.5", "--output", tmp_path / "kept2.txt"])
    assert code == 2 and f"the embeddings in {out} are of sample_keys.txt" in stderr, stderr


def test_an_embeddings_folder_alone_is_scored_by_the_methods_that_need_no_history(embedded, tmp_path):
    """Deduplicate, or select by geometry, before any training: get_coreset.py --input on
    embed.py's folder, without a produce run; the methods that read a history are refused."""
    import get_coreset
    from dynunc.report import page as report
    from dynunc.scoring.geometry import kcenter_scores

    out, lst = embedded["out"], embedded["list"]
    code, stdout, stderr = run_main(get_coreset.main, [
        "--input", out, "--dataset_file_list", lst, "--method", "prototype", "kcenter", "moderate", "random",
        "--fraction", "0.5", "--output", tmp_path / "{method}.txt"])
    assert code == 0, stderr
    assert f"scored 30 lines from the embeddings in {out}" in stderr
    np.testing.assert_array_equal(np.load(tmp_path / "kcenter.txt.scores.npy"),
                                  kcenter_scores(np.load(out / "embed_0.npy"), 0))
    assert all(len((tmp_path / f"{m}.txt").read_text().splitlines()) == 15 for m in ("prototype", "moderate"))
    # the deduplicated list: random keeps every line left at fraction 1
    code, stdout, stderr = run_main(get_coreset.main, [
        "--input", out, "--dataset_file_list", lst, "--method", "random", "--fraction", "1", "--dedup", "1",
        "--output", tmp_path / "dedup.txt"])
    assert code == 0, stderr
    assert (tmp_path / "dedup.txt").read_text() == lst.read_text()  # 30 distinct images: none removed
    for method in ("dynunc", "d2", "forgetting"):  # the default, one that reads another's scores, a history one
        code, _, stderr = run_main(get_coreset.main, ["--input", out, "--dataset_file_list", lst, "--method", method,
                                                      "--fraction", "0.5", "--output", tmp_path / "x.txt"])
        assert code == 2 and f"method {method} reads a produce run's history" in stderr, stderr
    assert not (tmp_path / "x.txt").exists()
    code, _, stderr = run_main(report.main, ["--input", out, "--dataset_file_list", lst, "--fraction", "0.5",
                                             "--output", tmp_path / "page"])
    assert code == 2 and f"{out} holds embeddings only: give it as --embeddings" in stderr, stderr
