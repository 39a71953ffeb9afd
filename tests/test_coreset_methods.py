"""get_coreset.py with several methods, fractions and selection rules, the file-list
fingerprint, and the refusals."""
import io
import os
import shutil

import numpy as np
import pytest

import get_coreset
from conftest import run_main, write_full_history
from dynunc.uncertainty import dynamic_uncertainty_scores
from dynunc.scoring.methods import METHODS

N, K = 90, 8
ALL = [m for m in METHODS if METHODS[m].embed is None]  # the embedding methods: test_embedding_methods.py


def run_cli(args):
    return run_main(get_coreset.main, args)


def make_history(run_dir, list_path, n=N, k=K, seed=0):
    """A full history (prob, correct, margin, el2n), about 10% unseen per epoch."""
    rng = np.random.default_rng(seed)
    return write_full_history(list_path, run_dir, rng.random(n), k, rng)


def write_list(path, n=N):
    """Unbalanced classes: class c has about twice as many lines as class c + 1."""
    labels = np.sort(np.random.default_rng(1).geometric(0.5, n) - 1)
    lines = [f"/n{c:08d}/img_{i:05d}.JPEG {c}" for i, c in enumerate(labels)]
    path.write_text("".join(line + "\n" for line in lines))
    return lines


@pytest.fixture
def s(tmp_path):
    lines = write_list(tmp_path / "train.txt")
    hdir = make_history(tmp_path / "run", tmp_path / "train.txt")
    return dict(tmp=tmp_path, run=tmp_path / "run", hdir=hdir, list=tmp_path / "train.txt", lines=lines)


def base(s, output, *extra):
    return ["--input", s["run"], "--dataset_file_list", s["list"], "--output", output, *extra]


def read(path):
    with open(path, "rb") as f:
        return f.read()


def listing(folder):
    return sorted(os.listdir(folder))


@pytest.mark.parametrize("rule", [[], ["--class-balanced"], ["--ccs", "0.1", "--seed", "3"],
                                  ["--class-balanced", "--ccs", "0.2", "--ccs-bins", "5"]])
def test_one_call_equals_separate_calls(s, rule):
    fractions = ["0.3", "0.5", "0.75"]
    out = s["tmp"] / "all"
    code, stdout, err = run_cli(base(s, out / "{method}_{fraction}.txt", "--method", *ALL, "--fraction", *fractions,
                                     "--window", "3", "--epochs", "1:5", *rule))
    assert code == 0, err
    assert len(stdout.splitlines()) == len(ALL) * len(fractions)
    # one scores file per method, not per fraction
    assert listing(out) == sorted([f"{m}_{f}.txt" for m in ALL for f in fractions]
                                  + [f"{m}_all.txt.scores.npy" for m in ALL])
    for m in ALL:
        for f in fractions:
            single = s["tmp"] / "single" / f"{m}_{f}.txt"
            code, _, err = run_cli(base(s, single, "--method", m, "--fraction", f, "--window", "3",
                                        "--epochs", "1:5", *rule))
            assert code == 0, err
            assert read(out / f"{m}_{f}.txt") == read(single), (m, f)
            assert read(out / f"{m}_all.txt.scores.npy") == read(str(single) + ".scores.npy"), m
            kept = read(single).decode().splitlines()
            assert len(kept) == int(N * float(f))
            assert kept == [line for line in s["lines"] if line in set(kept)]  # the list's order


def test_defaults_write_the_same_bytes_as_before(s):
    """dynunc with the default selection: the coreset is the kept lines in order and the
    scores file is np.save of dynamic_uncertainty_scores, byte for byte."""
    core = s["tmp"] / "core.txt"
    code, out, _ = run_cli(base(s, core, "--fraction", "0.75", "--window", "3"))
    assert code == 0
    assert out.strip() == f"kept 67 of 90 lines (fraction 0.75) -> {core}"
    probs = (np.load(os.path.join(s["hdir"], f"prob_{k}.npy")) for k in range(K))
    scores = dynamic_uncertainty_scores(probs, N, 3)
    buf = io.BytesIO()
    np.save(buf, scores, allow_pickle=False)
    assert read(str(core) + ".scores.npy") == buf.getvalue()
    keep = sorted(sorted(range(N), key=lambda i: (-scores[i], i))[:67])
    assert read(core) == "".join(s["lines"][i] + "\n" for i in keep).encode()
    assert listing(s["tmp"]) == ["core.txt", "core.txt.scores.npy", "run", "train.txt"]


def test_random_same_seed_same_subset(s):
    a, b, c = (s["tmp"] / name for name in ("a.txt", "b.txt", "c.txt"))
    for path, seed in ((a, 5), (b, 5), (c, 6)):
        assert run_cli(base(s, path, "--method", "random", "--fraction", "0.5", "--seed", str(seed)))[0] == 0
    assert read(a) == read(b) and read(a) != read(c)


def test_class_balanced_counts_on_the_cli(s):
    core = s["tmp"] / "cb.txt"
    code, out, err = run_cli(base(s, core, "--method", "aum", "--fraction", "0.5", "--class-balanced"))
    assert code == 0, err
    labels = np.array([int(line.split()[1]) for line in s["lines"]])
    kept_labels = np.array([int(line.split()[1]) for line in read(core).decode().splitlines()])
    sizes = np.bincount(labels)
    got = np.bincount(kept_labels, minlength=len(sizes))
    assert got.sum() == 45
    assert np.all(np.abs(got - sizes * 45 / N) < 1)  # each class within one of its exact share
    assert "aum, class-balanced" in out


def test_fingerprint_missing_is_a_warning(s):
    os.remove(os.path.join(s["hdir"], "file_list.json"))
    code, _, err = run_cli(base(s, s["tmp"] / "c.txt", "--fraction", "0.5", "--window", "3"))
    assert code == 0
    assert "warning" in err and "file_list.json does not exist" in err and str(s["list"]) in err


def test_fingerprint_matches_without_warning(s):
    code, _, err = run_cli(base(s, s["tmp"] / "c.txt", "--fraction", "0.5", "--window", "3"))
    assert code == 0 and "warning" not in err


def assert_refused(s, args, *messages):
    before = {name: read(s["tmp"] / name) for name in os.listdir(s["tmp"]) if os.path.isfile(s["tmp"] / name)}
    names = listing(s["tmp"])
    code, out, err = run_cli(args)
    assert code == 2, (out, err)
    for message in messages:
        assert message in err, err
    assert out == ""
    assert listing(s["tmp"]) == names  # nothing written, no temporary file
    assert {name: read(s["tmp"] / name) for name in before} == before


def test_refuse_changed_list_same_length(s):
    lines = list(s["lines"])
    lines[3], lines[4] = lines[4], lines[3]
    s["list"].write_text("".join(line + "\n" for line in lines))
    assert_refused(s, base(s, s["tmp"] / "c.txt", "--fraction", "0.5", "--window", "3"),
                   f"{s['list']} (90 entries", "is not the file list the history was recorded on",
                   os.path.join(s["hdir"], "file_list.json"))


def test_refuse_method_without_its_files(s):
    for k in range(K):
        os.remove(os.path.join(s["hdir"], f"margin_{k}.npy"))  # as an older produce run
    assert_refused(s, base(s, s["tmp"] / "{method}.txt", "--method", "confidence", "aum", "--fraction", "0.5"),
                   os.path.join(s["hdir"], "margin_0.npy") + " is missing: method aum needs margin_{epoch}.npy")
    # the methods that need only prob still work on that history
    assert run_cli(base(s, s["tmp"] / "c.txt", "--method", "confidence", "--fraction", "0.5"))[0] == 0


def test_refuse_forgetting_on_the_papers_text_history(s):
    hdir = s["tmp"] / "txt"
    os.makedirs(hdir)
    for k in range(K):
        np.savetxt(hdir / f"prob_{k}.txt", np.full(N, 0.5))
    args = ["--input", hdir, "--dataset_file_list", s["list"], "--fraction", "0.5"]
    assert_refused(s, args + ["--output", s["tmp"] / "f.txt", "--method", "forgetting"],
                   f"{hdir / 'correct_0.npy'} is missing: method forgetting")
    code, _, err = run_cli(args + ["--output", s["tmp"] / "v.txt", "--method", "variability"])
    assert code == 0 and "file_list.json does not exist" in err


def test_refuse_el2n_epochs_only_the_slice_is_needed(s):
    os.remove(os.path.join(s["hdir"], "el2n_6.npy"))
    assert run_cli(base(s, s["tmp"] / "e.txt", "--method", "el2n", "--fraction", "0.5", "--epochs", "0:6"))[0] == 0
    os.remove(s["tmp"] / "e.txt")
    os.remove(s["tmp"] / "e.txt.scores.npy")
    assert_refused(s, base(s, s["tmp"] / "e.txt", "--method", "el2n", "--fraction", "0.5", "--epochs", "5:"),
                   "el2n_6.npy is missing: method el2n")


def test_dynunc_epochs_scores_the_slice_as_if_the_history_held_it_alone(s):
    """--epochs A:B for dynunc: the windows lie inside epochs A..B-1, exactly as on a history
    that holds those epochs alone (renumbered from 0); epochs outside are not used."""
    alone = s["tmp"] / "alone"
    os.makedirs(alone)
    for new, old in enumerate(range(2, 7)):
        shutil.copy(os.path.join(s["hdir"], f"prob_{old}.npy"), alone / f"prob_{new}.npy")
    shutil.copy(os.path.join(s["hdir"], "file_list.json"), alone)
    os.remove(os.path.join(s["hdir"], "prob_7.npy"))  # the last epoch, outside the slice
    np.save(os.path.join(s["hdir"], "prob_7.npy"), np.full(N, np.nan, dtype=np.float32))  # unseen: would change scores
    for extra in ([], ["--include-last-window"]):
        code, _, err = run_cli(base(s, s["tmp"] / "sliced.txt", "--fraction", "0.5", "--window", "3", "--epochs", "2:7",
                                    *extra))
        assert code == 0, err
        code, _, err = run_cli(["--input", alone, "--dataset_file_list", s["list"], "--output", s["tmp"] / "alone.txt",
                                "--fraction", "0.5", "--window", "3", *extra])
        assert code == 0, err
        assert read(s["tmp"] / "sliced.txt.scores.npy") == read(s["tmp"] / "alone.txt.scores.npy")
        assert read(s["tmp"] / "sliced.txt") == read(s["tmp"] / "alone.txt")
    # Not the same as the whole history: the slice did leave epochs out.
    code, _, err = run_cli(base(s, s["tmp"] / "whole.txt", "--fraction", "0.5", "--window", "3"))
    assert read(s["tmp"] / "whole.txt.scores.npy") != read(s["tmp"] / "alone.txt.scores.npy")


def test_dynunc_epochs_refusals(s):
    assert_refused(s, base(s, s["tmp"] / "c.txt", "--fraction", "0.5", "--window", "3", "--epochs", "0:8:2"),
                   "--epochs 0:8:2: dynunc's windows are consecutive epochs; give STEP 1")
    assert_refused(s, base(s, s["tmp"] / "c.txt", "--fraction", "0.5", "--window", "4", "--epochs", "4:8"),
                   "--window 4 is too large for the 4 epochs that --epochs 4:8 selects in", "at most 3")
    assert_refused(s, base(s, s["tmp"] / "c.txt", "--fraction", "0.5", "--epochs", "0:6"),
                   "--window is required by method dynunc: --epochs 0:6 selects 6 of the 8 epochs in",
                   "2 <= J <= 5")


REFUSALS = {
    "unknown_method": (["--method", "dynunc", "bogus", "--fraction", "0.5", "--window", "3"],
                       "out/{method}.txt", "--method: unknown method 'bogus'"),
    "no_window_for_dynunc": (["--method", "dynunc", "--fraction", "0.5"], "c.txt",
                             "--window is required by method dynunc"),
    "epochs_past_the_end": (["--method", "el2n", "--fraction", "0.5", "--epochs", "2:9"], "c.txt",
                            "--epochs '2:9': STOP 9 is outside the 8 recorded epochs"),
    "epochs_empty": (["--method", "el2n", "--fraction", "0.5", "--epochs", "4:4"], "c.txt",
                     "--epochs '4:4' selects no epoch"),
    "ccs_one": (["--method", "aum", "--fraction", "0.5", "--ccs", "1"], "c.txt", "--ccs: BETA must be in [0, 1)"),
    "ccs_negative": (["--method", "aum", "--fraction", "0.5", "--ccs", "-0.1"], "c.txt", "BETA must be in [0, 1)"),
    "ccs_too_many_dropped": (["--method", "aum", "--fraction", "0.5", "--ccs", "0.6"], "c.txt",
                             "--ccs 0.6 with --fraction 0.5 (aum): dropping the hardest 54 of 90"),
    "no_method_placeholder": (["--method", "aum", "el2n", "--fraction", "0.5"], "c_{fraction}.txt",
                              "must contain {method}"),
    "no_fraction_placeholder": (["--method", "aum", "--fraction", "0.5", "0.7"], "c_{method}.txt",
                                "must contain {fraction}"),
    "fraction_twice": (["--method", "aum", "--fraction", "0.5", "0.5"], "c_{fraction}.txt",
                       "--fraction: '0.5' is given twice"),
    "fraction_not_a_number": (["--method", "aum", "--fraction", "half"], "c.txt", "--fraction: 'half' is not a number"),
    "fraction_keeps_nothing": (["--method", "aum", "--fraction", "0.5", "0.001"], "c_{fraction}.txt",
                               "keeps int(90 * 0.001) = 0"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals(s, case):
    extra, output, message = REFUSALS[case]
    assert_refused(s, base(s, s["tmp"] / output, *extra), message)


def test_placeholder_refused_before_anything_is_read(s):
    args = ["--input", s["tmp"] / "nowhere", "--dataset_file_list", s["tmp"] / "missing.txt",
            "--output", s["tmp"] / "c.txt", "--method", "aum", "el2n", "--fraction", "0.5"]
    assert_refused(s, args, "--output", "must contain {method}")


def test_output_collisions_refused(s):
    assert_refused(s, base(s, s["list"], "--method", "aum", "--fraction", "0.5"),
                   "would overwrite --dataset_file_list")


def test_epochs_without_el2n_is_ignored_with_a_warning(s):
    code, _, err = run_cli(base(s, s["tmp"] / "a.txt", "--method", "aum", "--fraction", "0.5", "--epochs", "0:99"))
    assert code == 0 and "--epochs is used by methods dynunc, el2n only; ignored" in err
