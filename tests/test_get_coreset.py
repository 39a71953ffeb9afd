"""get_coreset.py and dynunc/uncertainty.py against a literal reference.

The reference below follows docs/semantics.md §3 line by line, with plain loops:
it is slow and obvious, the implementation under test is streamed and vectorised.
A second reference, `shifted_buffer_scores`, is the previous vectorised implementation
(a float64 buffer shifted by one column per epoch, np.std per chunk of rows): fast
enough for larger random histories.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import get_coreset  # noqa: E402
from conftest import run_main  # noqa: E402
from dynunc.uncertainty import dynamic_uncertainty_scores, select_coreset  # noqa: E402
from dynunc.ranking import tie_priority  # noqa: E402
from dynunc.history import HistoryError, load_epoch_prob  # noqa: E402


# -----------------------------------------------------------------------------
# Reference (docs/semantics.md §3, literally)
# -----------------------------------------------------------------------------
def reference_scores(p, unseen, window, include_last=False):
    """p: (N, K) recorded values; unseen: (N, K) bool. Loops, as in the pseudocode."""
    n, k_epochs = p.shape
    buffer = np.zeros((n, window), dtype=np.float64)
    windows = []
    for k in range(k_epochs):
        for i in range(n):
            if not unseen[i, k]:
                buffer[i] = np.concatenate([buffer[i, 1:], [p[i, k]]])
        last = k_epochs if include_last else k_epochs - 1
        if window - 1 <= k < last:
            windows.append(10 * np.std(buffer, axis=1, ddof=1))
    return np.mean(windows, axis=0)


def shifted_buffer_scores(prob_arrays, n, window, include_last=False, chunk_rows=1 << 16):
    """The previous implementation of dynamic_uncertainty_scores, kept as a reference."""
    buffer = np.zeros((n, window), dtype=np.float64)
    total = np.zeros(n, dtype=np.float64)
    windows, pending = 0, False
    for k, prob in enumerate(prob_arrays):
        for lo in range(0, n, chunk_rows):
            hi = min(lo + chunk_rows, n)
            rows = buffer[lo:hi]
            if pending:
                total[lo:hi] += 10.0 * np.std(rows, axis=1, ddof=1)
            idx = np.flatnonzero(~np.isnan(prob[lo:hi]))
            rows[idx, :-1] = rows[idx, 1:]
            rows[idx, -1] = prob[lo:hi][idx]
        windows += pending
        pending = k >= window - 1
    if include_last and pending:
        total += 10.0 * np.std(buffer, axis=1, ddof=1)
        windows += 1
    return total / windows


def reference_keep(scores, fraction):
    n = len(scores)
    ranked = sorted(range(n), key=lambda i: (-scores[i], i))  # lower index wins ties
    return sorted(ranked[: int(n * fraction)])


def reference_from_txt(hdir, k_epochs, window):
    """The paper's reading: np.loadtxt, and a value of exactly 0 means unseen."""
    p = np.stack([np.loadtxt(os.path.join(hdir, f"prob_{k}.txt")) for k in range(k_epochs)], axis=1)
    return reference_scores(p, p == 0, window)


# -----------------------------------------------------------------------------
# Hand-built histories
# -----------------------------------------------------------------------------
def random_history(seed, n, k_epochs, unseen_rate=0.2):
    """(N, K) float32 probabilities and an unseen mask with: a fully seen epoch, a sample
    seen only once, a sample never seen, and a seen probability of exactly 0."""
    rng = np.random.default_rng(seed)
    p = rng.random((n, k_epochs)).astype(np.float32)
    p[p == 0] = 0.5  # only the planted zero below is a real 0
    unseen = rng.random((n, k_epochs)) < unseen_rate
    unseen[:, 0] = False  # epoch 0 fully seen (the all-seen fast path)
    unseen[1, :] = True
    unseen[1, k_epochs // 2] = False
    unseen[2, :] = True
    unseen[2, 0] = False
    unseen[3, :] = True  # never seen at all: buffer stays zero
    p[4, 1] = 0.0
    unseen[4, 1] = False  # a real probability of 0 (seen in .npy)
    return p, unseen


def write_npy_history(hdir, p, unseen):
    os.makedirs(hdir, exist_ok=True)
    for k in range(p.shape[1]):
        col = p[:, k].copy()
        col[unseen[:, k]] = np.nan
        np.save(os.path.join(hdir, f"prob_{k}.npy"), col)


def write_txt_history(hdir, p, unseen):
    """The paper's format: np.savetxt of float32 values, 0 where unseen."""
    os.makedirs(hdir, exist_ok=True)
    for k in range(p.shape[1]):
        col = p[:, k].copy()
        col[unseen[:, k]] = 0
        np.savetxt(os.path.join(hdir, f"prob_{k}.txt"), col)


def write_list(path, n):
    with open(path, "w") as f:
        for i in range(n):
            f.write(f"/n{i % 7:08d}/img_{i:05d}.JPEG {i % 7}\n")
    with open(path) as f:
        return [line.rstrip("\n") for line in f]


def columns(p, unseen):
    for k in range(p.shape[1]):
        col = p[:, k].astype(np.float64)
        col[unseen[:, k]] = np.nan
        yield col


# -----------------------------------------------------------------------------
# Scores
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("seed,n,k_epochs,window,chunk_rows", [
    (0, 50, 6, 2, 7),
    (1, 120, 10, 3, 16),
    (2, 97, 12, 5, 1 << 16),
    (3, 64, 9, 8, 1),
    (4, 200, 15, 10, 33),
])
def test_scores_match_reference(seed, n, k_epochs, window, chunk_rows):
    p, unseen = random_history(seed, n, k_epochs)
    ref = reference_scores(p.astype(np.float64), unseen, window)
    got = dynamic_uncertainty_scores(columns(p, unseen), n, window, chunk_rows=chunk_rows)
    assert got.dtype == np.float64 and got.shape == (n,)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    for fraction in (0.1, 0.5, 0.75, 1.0):
        assert select_coreset(got, fraction).tolist() == reference_keep(ref, fraction)


def test_include_last_window_matches_reference():
    p, unseen = random_history(5, 80, 8)
    for window in (3, 8):  # window == K is allowed with the last window
        ref = reference_scores(p.astype(np.float64), unseen, window, include_last=True)
        got = dynamic_uncertainty_scores(columns(p, unseen), 80, window, include_last=True, chunk_rows=9)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    # default differs: the last window is left out
    default = dynamic_uncertainty_scores(columns(p, unseen), 80, 3)
    assert not np.allclose(default, reference_scores(p.astype(np.float64), unseen, 3, include_last=True))


def test_chunking_is_bit_exact():
    p, unseen = random_history(6, 301, 11)
    whole = dynamic_uncertainty_scores(columns(p, unseen), 301, 4, chunk_rows=10**6)
    for chunk_rows in (1, 3, 64):
        assert np.array_equal(dynamic_uncertainty_scores(columns(p, unseen), 301, 4, chunk_rows=chunk_rows), whole)


def hard_history(seed, n, k_epochs, unseen_rate=0.05):
    """(K, N) float32 rows with NaN gaps and the cases that break a running-sum shortcut:
    constant samples (0.3, 1.0, a tiny value, an unseen gap in the middle), samples that
    settle from large to tiny spread, and near-ties (histories one float32 ulp apart, or
    the same values in another order)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(-2, 2, (k_epochs, n)) + np.linspace(0, 12, k_epochs)[:, None] * rng.random(n)
    p = (1 / (1 + np.exp(-logits))).astype(np.float32)
    p[rng.random((k_epochs, n)) < unseen_rate] = np.nan
    p[:, 0] = 0.3
    p[:, 1] = 1.0
    p[:, 2] = np.float32(1e-30)
    p[:, 3] = 0.7
    p[k_epochs // 2, 3] = np.nan  # constant around a gap
    p[:, 4] = p[:, 5] = p[:, 6] = np.float32(0.999)
    p[:: 3, 5] = np.nextafter(np.float32(0.999), np.float32(1))  # 1 ulp apart from sample 4
    p[:, 6] = p[::-1, 4]
    settle = np.linspace(0.2, 0.9999, k_epochs, dtype=np.float32)
    settle[k_epochs // 2:] = 0.9999 + np.float32(1e-7) * (np.arange(k_epochs - k_epochs // 2) % 2)
    p[:, 7] = settle
    p[:, 8] = settle
    p[-1, 8] = np.nextafter(settle[-1], np.float32(0))  # near-tie with sample 7
    return p


@pytest.mark.parametrize("seed,n,k_epochs,window,threads,chunk_rows", [
    (0, 3000, 20, 10, 1, 1 << 13),
    (1, 2500, 13, 5, 2, 64),
    (2, 1200, 30, 2, 3, 100),
    (3, 700, 40, 20, 2, 1),
    (4, 900, 18, 9, 4, 300),
])
def test_fast_scores_equal_the_previous_implementation(seed, n, k_epochs, window, threads, chunk_rows):
    p = hard_history(seed, n, k_epochs)
    for include_last in (False, True):
        ref = shifted_buffer_scores(iter(p), n, window, include_last)
        got = dynamic_uncertainty_scores(iter(p), n, window, include_last, chunk_rows=chunk_rows, threads=threads)
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=0)
        assert got[0] == got[1] == got[2] == 0.0  # constant windows: exactly 0, no cancellation residue
        assert got[3] == ref[3]
        for fraction in (0.05, 0.25, 0.5, 0.75, 0.999):
            assert np.array_equal(select_coreset(got, fraction), select_coreset(ref, fraction))


def test_float64_history_keeps_float64_precision():
    """Values that are not float32 (a float64 text history) must not be rounded to float32,
    even when they appear after float32 epochs."""
    rng = np.random.default_rng(8)
    p32 = rng.random((6, 200)).astype(np.float32)
    p64 = rng.random((6, 200)) * (1 - 1e-9)  # not representable in float32
    epochs = [p32[0], p32[1], p64[2], p32[3], p64[4], p64[5]]
    ref = shifted_buffer_scores(iter(epochs), 200, 3)
    got = dynamic_uncertainty_scores(iter(epochs), 200, 3, threads=2)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=0)
    rounded = shifted_buffer_scores((e.astype(np.float32) for e in epochs), 200, 3)
    assert not np.allclose(got, rounded, rtol=1e-9, atol=0)


def test_too_short_history_and_bad_shape():
    p, unseen = random_history(7, 10, 4)
    with pytest.raises(ValueError, match="no window"):
        dynamic_uncertainty_scores(columns(p, unseen), 10, 4)
    with pytest.raises(ValueError, match="window must be >= 2"):
        dynamic_uncertainty_scores(columns(p, unseen), 10, 1)
    with pytest.raises(ValueError, match="expected 11 values"):
        dynamic_uncertainty_scores(columns(p, unseen), 11, 2)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        dynamic_uncertainty_scores(columns(p, unseen), 10, 2, threads=0)


def seeded_keep(scores, keep, seed):
    """Highest score first, NaN last, ties by the seeded priority of the index."""
    priority = tie_priority(np.arange(len(scores)), seed)
    ranked = sorted(range(len(scores)),
                    key=lambda i: (np.isnan(scores[i]), 0.0 if np.isnan(scores[i]) else -scores[i], priority[i], i))
    return sorted(ranked[:keep])


def test_ties_at_the_cut_are_drawn_from_the_seed():
    scores = np.array([1.0, 3.0, 2.0, 3.0, 2.0, 2.0, 0.5])
    assert select_coreset(scores, 2 / 7).tolist() == [1, 3]  # no tie at the cut: as before
    assert select_coreset(scores, 5 / 7).tolist() == [1, 2, 3, 4, 5]
    drawn = {tuple(select_coreset(scores, 3 / 7, seed=seed).tolist()) for seed in range(20)}
    assert drawn == {(1, 2, 3), (1, 3, 4), (1, 3, 5)}  # one of the three 2.0s, whichever the seed draws
    many = np.random.default_rng(0).integers(0, 3, 5000).astype(np.float64)  # ties everywhere
    for fraction in (0.1, 0.5, 0.9):
        for seed in (0, 1):
            assert select_coreset(many, fraction, seed=seed).tolist() == seeded_keep(many, int(5000 * fraction), seed)


def test_selection_equals_the_seeded_ranking():
    """Including NaN scores (kept last, also drawn when tied) and signed zeros (equal)."""
    rng = np.random.default_rng(1)
    for trial in range(200):
        n = int(rng.integers(1, 60))
        scores = rng.choice([0.0, -0.0, 1.0, 2.5, np.nan, 1e-300, 3.0], n) if trial % 2 else rng.random(n)
        for keep in range(1, n + 1):
            expected = seeded_keep(scores, keep, trial)
            assert select_coreset(scores, 1.0, keep=keep, seed=trial).tolist() == expected, (scores, keep)
            if trial % 2 == 0:  # no ties: what the paper's rule (and a stable sort) keeps
                assert expected == sorted(np.argsort(-scores, kind="stable")[:keep].tolist())


# -----------------------------------------------------------------------------
# Reading history files
# -----------------------------------------------------------------------------
def test_load_epoch_prob_npy_and_txt(tmp_path):
    col = np.array([0.25, np.nan, 0.0, 1.0], dtype=np.float32)
    np.save(tmp_path / "prob_0.npy", col)
    for mmap in (False, True):
        got = load_epoch_prob(str(tmp_path / "prob_0.npy"), expected_len=4, mmap=mmap)
        assert got.dtype == np.float32
        assert np.array_equal(got, col, equal_nan=True)  # a stored 0.0 stays a seen 0.0
    np.savetxt(tmp_path / "prob_0.txt", np.array([0.25, 0.0, -0.0, 1.0], dtype=np.float32))
    got = load_epoch_prob(str(tmp_path / "prob_0.txt"), expected_len=4)
    assert got.dtype == np.float64
    assert np.array_equal(got, [0.25, np.nan, np.nan, 1.0], equal_nan=True)  # paper: 0 = unseen
    with pytest.raises(HistoryError, match="has 4 values but the file list has 5 lines"):
        load_epoch_prob(str(tmp_path / "prob_0.txt"), expected_len=5)


# -----------------------------------------------------------------------------
# The command line
# -----------------------------------------------------------------------------
def run_cli(args):
    return run_main(get_coreset.main, args)


@pytest.fixture
def setup(tmp_path):
    n, k_epochs = 60, 8
    p, unseen = random_history(11, n, k_epochs)
    run_dir = tmp_path / "run"
    write_npy_history(str(run_dir / "pred_prob_history"), p, unseen)
    lines = write_list(str(tmp_path / "train.txt"), n)
    return dict(tmp=tmp_path, n=n, k=k_epochs, p=p, unseen=unseen, run=run_dir,
                hdir=run_dir / "pred_prob_history", list=tmp_path / "train.txt", lines=lines)


def cli_args(s, **over):
    a = dict(input=s["run"], dataset_file_list=s["list"], fraction=0.75, window=3, output=s["tmp"] / "core.txt")
    a.update(over)
    out = []
    for key, value in a.items():
        out += [f"--{key}", value]
    return out


def read_text(path):
    with open(path) as f:
        return f.read().splitlines()


def test_cli_npy_end_to_end(setup):
    s = setup
    code, out, _ = run_cli(cli_args(s))
    assert code == 0
    core = s["tmp"] / "core.txt"
    assert out.strip() == f"kept 45 of 60 lines (fraction 0.75) -> {core}"
    ref = reference_scores(s["p"].astype(np.float64), s["unseen"], 3)
    keep = reference_keep(ref, 0.75)
    assert read_text(core) == [s["lines"][i] for i in keep]
    scores = np.load(str(core) + ".scores.npy")
    assert scores.dtype == np.float64 and scores.shape == (s["n"],)  # one float64 per line
    np.testing.assert_allclose(scores, ref, rtol=0, atol=1e-12)
    assert sorted(os.listdir(s["tmp"])) == ["core.txt", "core.txt.scores.npy", "run", "train.txt"]


def test_cli_txt_end_to_end_and_history_folder_as_input(setup):
    s = setup
    hdir = s["tmp"] / "txt_history"
    write_txt_history(str(hdir), s["p"], s["unseen"])
    # the paper's reading of the paper's files: 0 = unseen. The planted real 0 of
    # sample 4 is unseen here, unlike in .npy (docs/semantics.md §7, bug 3).
    ref = reference_from_txt(str(hdir), s["k"], 4)
    code, out, _ = run_cli(cli_args(s, input=hdir, window=4, fraction=0.5))
    assert code == 0, out
    core = s["tmp"] / "core.txt"
    assert read_text(core) == [s["lines"][i] for i in reference_keep(ref, 0.5)]
    np.testing.assert_allclose(np.load(str(core) + ".scores.npy"), ref, rtol=0, atol=1e-12)


def test_cli_subprocess(setup):
    s = setup
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "get_coreset.py")] + [str(a) for a in cli_args(s)],
                          cwd=str(s["tmp"]), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "kept 45 of 60 lines (fraction 0.75)" in proc.stdout
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "get_coreset.py")]
                          + [str(a) for a in cli_args(s, fraction=0)], capture_output=True, text=True)
    assert proc.returncode == 2 and "fraction" in proc.stderr


def test_cli_tie_break(setup):
    s = setup
    hdir = s["tmp"] / "flat"
    p = np.tile(np.linspace(0.1, 0.9, s["k"], dtype=np.float32), (s["n"], 1))  # every sample alike
    write_npy_history(str(hdir), p, np.zeros_like(p, dtype=bool))
    code, out, _ = run_cli(cli_args(s, input=hdir, fraction=0.25) + ["--seed", "3"])
    assert code == 0
    expected = np.sort(np.argsort(tie_priority(np.arange(60), 3), kind="stable")[:15])
    assert read_text(s["tmp"] / "core.txt") == [s["lines"][i] for i in expected]  # a draw, not the first 15 lines
    assert "inside a tie of 60 images at score" in out and "15 kept at random (--seed 3)" in out


def test_include_last_window_flag(setup):
    s = setup
    k = s["k"]
    code, _, err = run_cli(cli_args(s, window=k))
    assert code == 2 and f"at most {k - 1}" in err
    code, _, _ = run_cli(cli_args(s, window=k) + ["--include-last-window"])
    assert code == 0
    ref = reference_scores(s["p"].astype(np.float64), s["unseen"], k, include_last=True)
    np.testing.assert_allclose(np.load(str(s["tmp"] / "core.txt.scores.npy")), ref, rtol=0, atol=1e-12)


def _corrupt(s, name, content):
    path = s["hdir"] / name
    with open(path, "wb") as f:
        f.write(content)
    return path


REFUSALS = {
    "fraction_zero": (dict(fraction=0), None, "fraction must be in (0, 1]"),
    "fraction_negative": (dict(fraction=-0.5), None, "fraction must be in (0, 1]"),
    "fraction_above_one": (dict(fraction=1.5), None, "fraction must be in (0, 1]"),
    "keeps_nothing": (dict(fraction=0.01), None, "keeps int(60 * 0.01) = 0"),
    "window_one": (dict(window=1), None, "window must be >= 2"),
    "window_too_large": (dict(window=8), None, "--window 8 is too large for 8 epochs"),
    "no_history": (dict(input="EMPTY"), None, "no prediction history"),
    "output_is_list": (dict(output="LIST"), None, "would overwrite --dataset_file_list"),
    "output_is_list_via_symlink": (dict(output="LINK"), None, "would overwrite --dataset_file_list"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_cli_refusals(setup, case):
    s = setup
    over, _, message = REFUSALS[case]
    over = dict(over)
    if over.get("input") == "EMPTY":
        os.makedirs(s["tmp"] / "empty")
        over["input"] = s["tmp"] / "empty"
    if over.get("output") == "LIST":
        over["output"] = os.path.relpath(s["list"])  # same file, other spelling
    if over.get("output") == "LINK":
        os.symlink(s["list"], s["tmp"] / "link.txt")
        over["output"] = s["tmp"] / "link.txt"
    assert_refused(s, cli_args(s, **over), message)


def assert_refused(s, args, message):
    before = sorted(os.listdir(s["tmp"]))
    list_before = read_text(s["list"])
    code, out, err = run_cli(args)
    assert code == 2, (out, err)
    assert message in err, err
    assert "kept" not in out
    assert sorted(os.listdir(s["tmp"])) == before  # nothing written, no temp files left
    assert read_text(s["list"]) == list_before


def test_refuse_length_mismatch(setup):
    s = setup
    np.save(s["hdir"] / "prob_5.npy", np.full(s["n"] + 1, 0.5, dtype=np.float32))
    path = s["hdir"] / "prob_5.npy"
    assert_refused(s, cli_args(s), f"{path}: has 61 values but the file list has 60 lines")


def test_refuse_length_mismatch_txt(setup):
    s = setup
    hdir = s["tmp"] / "txt_history"
    write_txt_history(str(hdir), s["p"][:-1], s["unseen"][:-1])
    assert_refused(s, cli_args(s, input=hdir), f"{hdir / 'prob_0.txt'}: has 59 values but the file list has 60 lines")


def test_refuse_gap(setup):
    s = setup
    os.remove(s["hdir"] / "prob_3.npy")
    assert_refused(s, cli_args(s), "epoch 3 is missing")


def test_refuse_missing_first_epoch(setup):
    s = setup
    os.remove(s["hdir"] / "prob_0.npy")
    assert_refused(s, cli_args(s), "epoch 0 is missing")


def test_refuse_unparsable_txt(setup):
    s = setup
    hdir = s["tmp"] / "txt_history"
    write_txt_history(str(hdir), s["p"], s["unseen"])
    with open(hdir / "prob_2.txt", "a") as f:
        f.write("not-a-number\n")
    assert_refused(s, cli_args(s, input=hdir), f"{hdir / 'prob_2.txt'}: cannot be read")


def test_refuse_corrupt_npy(setup):
    s = setup
    path = _corrupt(s, "prob_4.npy", b"\x93NUMPY garbage")
    assert_refused(s, cli_args(s), f"{path}: cannot be read")


def test_refuse_truncated_npy(setup):
    s = setup
    path = s["hdir"] / "prob_6.npy"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])
    assert_refused(s, cli_args(s), f"{path}: cannot be read")


def test_refuse_infinite_values(setup):
    s = setup
    col = np.full(s["n"], 0.5, dtype=np.float32)
    col[7] = np.inf
    np.save(s["hdir"] / "prob_1.npy", col)
    assert_refused(s, cli_args(s), "prob_1.npy: holds infinite values (first at index 7)")


def test_existing_output_is_kept_on_refusal(setup):
    s = setup
    core = s["tmp"] / "core.txt"
    core.write_text("old\n")
    code, _, _ = run_cli(cli_args(s, fraction=0.001))
    assert code == 2
    assert core.read_text() == "old\n"
    assert not os.path.exists(str(core) + ".scores.npy")


def test_refuse_missing_list(setup):
    s = setup
    assert_refused(s, cli_args(s, dataset_file_list=s["tmp"] / "nope.txt"), "--dataset_file_list " + str(s["tmp"] / "nope.txt") + ": not found")


def test_refuse_a_malformed_list_naming_its_line(setup):
    """The list is read through its index, which refuses a line without a label (the
    copy of kept lines used to carry such a line into the coreset, for main.py to refuse)."""
    s = setup
    lines = list(s["lines"])
    lines[6] = lines[6].rsplit(maxsplit=1)[0]
    with open(s["list"], "w") as f:
        f.write("".join(line + "\n" for line in lines))
    assert_refused(s, cli_args(s), f"{s['list']}:7: expected '<relative path> <label>'")


def test_blank_lines_in_list_are_not_entries(setup):
    s = setup
    with open(s["list"], "w") as f:  # same 60 entries, with blank lines between
        f.write("\n".join(line + "\n" for line in s["lines"]))
    code, out, _ = run_cli(cli_args(s))
    assert code == 0 and "kept 45 of 60 lines" in out
    ref = reference_scores(s["p"].astype(np.float64), s["unseen"], 3)
    assert read_text(s["tmp"] / "core.txt") == [s["lines"][i] for i in reference_keep(ref, 0.75)]
