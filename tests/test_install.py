"""The package installs on its own: `pip install --target` of the repository, then, from a
folder outside it and with only the installed copy on the path, every dynunc module
imports without the research layout (data/, utils/, models/), and the console scripts
run a real selection."""
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The folder `pip install --no-deps --target` put the package in (the dependencies
    are this interpreter's: torch, numpy, matplotlib, faiss)."""
    import shutil

    target = tmp_path_factory.mktemp("site")
    clone = tmp_path_factory.mktemp("clone")  # what a clone holds of the package (a build writes build/ there)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), clone / name)
    shutil.copytree(os.path.join(ROOT, "dynunc"), clone / "dynunc", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--target", str(target), str(clone)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return target


def run_outside(installed, cwd, args, **kwargs):
    """`args` run from `cwd` (outside the repository) with only the installed package on
    the path: the repository root is neither the working folder nor on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(installed)
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, **kwargs)


def test_every_module_imports_from_the_installed_copy_alone(installed, tmp_path):
    code = ("import importlib, pkgutil, sys, dynunc\n"
            "names = [m.name for m in pkgutil.walk_packages(dynunc.__path__, 'dynunc.')]\n"
            "for name in names: importlib.import_module(name)\n"
            "research = sorted(k for k in sys.modules if k.split('.')[0] in ('data', 'utils', 'models', 'engine',"
            " 'hooks', 'main', 'kernels', 'get_coreset', 'report'))\n"
            "print(dynunc.__file__, len(names), research)\n")
    proc = run_outside(installed, tmp_path, [sys.executable, "-c", code])
    assert proc.returncode == 0, proc.stderr[-3000:]
    path, count, research = proc.stdout.split(" ", 2)
    assert path.startswith(str(installed))
    assert int(count) > 25
    assert research.strip() == "[]"


def test_console_script_selects_from_a_history(installed, tmp_path):
    """`get_coreset` (the console script, not the repository's get_coreset.py) keeps the
    highest-scored lines of a file list from a small history."""
    rng = np.random.default_rng(0)
    hdir = tmp_path / "run" / "pred_prob_history"
    hdir.mkdir(parents=True)
    n = 12
    for epoch in range(4):
        np.save(hdir / f"prob_{epoch}.npy", rng.random(n).astype(np.float32))
    (tmp_path / "list.txt").write_text("".join(f"/c/img_{i}.jpg {i % 3}\n" for i in range(n)))
    script = os.path.join(str(installed), "bin", "get_coreset")
    proc = run_outside(installed, tmp_path, [sys.executable, script, "--input", "run", "--dataset_file_list",
                                             "list.txt", "--fraction", "0.5", "--window", "2",
                                             "--output", "coreset.txt"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    kept = (tmp_path / "coreset.txt").read_text().splitlines()
    assert len(kept) == 6 and all(line in (tmp_path / "list.txt").read_text() for line in kept)
    help_text = run_outside(installed, tmp_path, [sys.executable, os.path.join(str(installed), "bin",
                                                                               "dynunc-report"), "--help"])
    assert help_text.returncode == 0 and "--dataset_file_list" in help_text.stdout


def readme_example() -> str:
    """The README's plain-loop example, as written."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    block = text.split("<!-- plain-loop example -->\n```python\n", 1)[1].split("```", 1)[0]
    return block


def test_the_readme_plain_loop_runs_as_written_from_the_installed_package(installed, tmp_path):
    code = readme_example()
    added = [line for line in code.splitlines() if "# +" in line]
    assert len(added) <= 15
    (tmp_path / "example.py").write_text(code)
    proc = run_outside(installed, tmp_path, [sys.executable, "example.py"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("kept 358 of 512: ")
    names = os.listdir(tmp_path / "run" / "pred_prob_history")
    assert sorted(n for n in names if n.startswith("prob_")) == sorted(f"prob_{e}.npy" for e in range(12))
    prob = np.load(tmp_path / "run" / "pred_prob_history" / "prob_11.npy")
    assert prob.shape == (512,) and not np.isnan(prob).any()  # every sample seen (no drop-last)
