"""A run folder belongs to one run (utils/run_identity.py): main.py and main_and_produce.py
record what defines the run in OUTPUT/run.json and auto-resume only a command that asks
for the same run; any other is refused in one line (exit 2) naming what differs, and
nothing in the folder changes but the one line a refusal adds to the earlier run's log."""
import json
import os

import pytest

from conftest import make_image_tree, run_main
from main import cli
from test_bad_input import CONFIG, folder_state
from test_end_to_end import OPTS
from utils import run_identity

pytestmark = pytest.mark.usefixtures("restore_root_logging")


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("identity")
    make_image_tree(str(root / "train"), num_classes=3, per_class=4, seed=0)
    make_image_tree(str(root / "val"), num_classes=3, per_class=2, seed=1)
    lines = (root / "train" / "file_list.txt").read_text().splitlines()
    (root / "core.txt").write_text("".join(line + "\n" for line in lines[:8]))
    opts = OPTS + ["DATA.DATA_PATH_TRAIN", str(root / "train"), "DATA.DATA_PATH_VAL", str(root / "val"),
                   "TRAIN.EPOCHS", "1", "PRODUCE.EMBED_DIM", "0"]
    return root, opts


@pytest.fixture(scope="module")
def finished(trees, tmp_path_factory):
    """A finished one-epoch run on the coreset core.txt, and the state of its folder."""
    root, opts = trees
    out = tmp_path_factory.mktemp("runs") / "run"
    code, _, err = run_main(cli, ["--config", CONFIG, "--coreset", root / "core.txt", "--output", out,
                                  "--opts", *opts])
    assert code == 0, err
    return out


def without_log(state):
    return {k: v for k, v in state.items() if not k.startswith("log_rank")}


def test_the_record_names_the_lists_by_content_and_leaves_out_what_may_change(trees, finished):
    root, _ = trees
    record = json.loads((finished / "run.json").read_text())
    assert record["command"] == "main.py" and record["processes"] == 1
    assert record["coreset"]["entries"] == 8 and len(record["coreset"]["sha256"]) == 64
    assert record["train_list"]["entries"] == 12 and record["val_list"]["entries"] == 6
    assert record["config"]["TRAIN.EPOCHS"] == 1 and record["config"]["SEED"] == 7
    for key in run_identity.MAY_CHANGE:
        assert key not in record["config"]
    assert not any(k.startswith("PRODUCE.") for k in record["config"])  # main.py does not read them


def refused(trees, out, extra=(), opts=(), coreset="core.txt"):
    root, base = trees
    args = ["--config", CONFIG, "--output", out, *extra, "--opts", *base, *opts]
    if coreset:
        args[4:4] = ["--coreset", root / coreset]
    before = without_log(folder_state(out))
    config_yaml = (out / "config.yaml").read_text()
    code, stdout, stderr = run_main(cli, args)
    assert code == 2, stdout + stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stdout + stderr
    assert without_log(folder_state(out)) == before  # run.json, config.yaml, metrics, checkpoints
    assert (out / "config.yaml").read_text() == config_yaml
    return stderr


def test_another_config_is_refused_naming_the_key(trees, finished):
    err = refused(trees, finished, opts=["TRAIN.BASE_LR", "0.2"])
    assert err.startswith(f"main.py: error: {finished} holds another run: TRAIN.BASE_LR was 0.05, now 0.2; "
                          f"give a new --output, or --resume {finished}/ckpts/ckpt_epoch_0.pth to continue"), err


def test_more_epochs_are_another_run(trees, finished):
    err = refused(trees, finished, opts=["TRAIN.EPOCHS", "3"])
    assert "TRAIN.EPOCHS was 1, now 3" in err


def test_a_changed_coreset_file_is_refused(trees, finished, tmp_path):
    root, _ = trees
    lines = (root / "train" / "file_list.txt").read_text().splitlines()
    (root / "core2.txt").write_text("".join(line + "\n" for line in lines[2:10]))
    err = refused(trees, finished, coreset="core2.txt")
    assert "holds another run: --coreset " in err and "8 entries" in err


def test_the_full_list_instead_of_the_coreset_is_refused(trees, finished):
    err = refused(trees, finished, coreset=None)
    assert "holds another run: --coreset " in err and ", now none" in err


def test_produce_into_a_plain_runs_folder_is_refused(trees, finished):
    root, base = trees
    before = without_log(folder_state(finished))
    code, _, err = run_main(lambda a: cli(a, produce=True),
                            ["--config", CONFIG, "--coreset", root / "core.txt", "--output", finished, "--opts",
                             *base])
    assert code == 2 and 'command was "main.py", now "main_and_produce.py"' in err, err
    assert without_log(folder_state(finished)) == before


def test_the_same_run_resumes_and_may_change_logging_and_workers(trees, finished):
    root, base = trees
    before = without_log(folder_state(finished))
    code, _, err = run_main(cli, ["--config", CONFIG, "--coreset", root / "core.txt", "--output", finished,
                                  "--opts", *base, "PRINT_FREQ", "1", "DATA.NUM_WORKERS", "2",
                                  "TRAIN.KEEP_CHECKPOINTS", "3"])
    assert code == 0, err
    after = without_log(folder_state(finished))
    # finished: nothing trained again (the checkpoint is the same), the record is left as it was
    assert set(after) == set(before)
    for name in ("run.json", os.path.join("ckpts", "ckpt_epoch_0.pth")):
        assert after[name] == before[name]


def test_resume_continues_deliberately_and_rebinds_the_folder(trees, tmp_path):
    root, base = trees
    out = tmp_path / "run"
    assert run_main(cli, ["--config", CONFIG, "--output", out, "--opts", *base])[0] == 0
    ckpt = out / "ckpts" / "ckpt_epoch_0.pth"
    code, _, err = run_main(cli, ["--config", CONFIG, "--output", out, "--resume", ckpt, "--opts", *base,
                                  "TRAIN.EPOCHS", "2"])
    assert code == 0, err
    assert json.loads((out / "run.json").read_text())["config"]["TRAIN.EPOCHS"] == 2
    assert (out / "ckpts" / "ckpt_epoch_1.pth").exists()
    # and the folder now belongs to the 2-epoch run: the plain command resumes it
    assert run_main(cli, ["--config", CONFIG, "--output", out, "--opts", *base, "TRAIN.EPOCHS", "2"])[0] == 0


def test_a_folder_from_before_run_json_is_compared_by_its_config_yaml(trees, tmp_path):
    root, base = trees
    out = tmp_path / "run"
    assert run_main(cli, ["--config", CONFIG, "--output", out, "--opts", *base])[0] == 0
    os.remove(out / "run.json")
    err = refused(trees, out, opts=["SEED", "8"], coreset=None)
    assert "holds another run: SEED was 7, now 8" in err


def test_differences_name_every_part():
    old = {"command": "main.py", "processes": 2, "config": {"SEED": 0, "TRAIN.EPOCHS": 12},
           "train_list": {"path": "/a", "entries": 4, "sha256": "ab"}, "coreset": None, "val_list": None}
    new = dict(old, processes=1, config={"SEED": 0, "TRAIN.EPOCHS": 12, "PRINT_FREQ": 3},
               train_list={"path": "/b", "entries": 4, "sha256": "ab"})
    # the list moved (another path, the same bytes) and a may-change key appeared: only the processes differ
    assert run_identity.differences(old, new) == [("processes", 2, 1)]


def test_the_demo_gives_other_settings_their_own_files_and_folders(tmp_path):
    """`scripts/demo.py --fraction 0.3` after `make demo` used to reuse the 0.5 runs and print their accuracy."""
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("demo", os.path.join(ROOT, "scripts", "demo.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    out = str(tmp_path)
    default = demo.run_names(out, 0.5, 4, 2)
    assert default["train_dynunc"] == os.path.join(out, "train_dynunc")  # the names the README shows
    assert default["report"] == os.path.join(out, "report") and default["produce"] == os.path.join(out, "produce")
    settings = [(0.5, 4, 2), (0.3, 4, 2), (0.5, 3, 2), (0.3, 3, 2), (0.5, 4, 1)]
    names = [demo.run_names(out, *s) for s in settings]
    for key in ("train_dynunc", "train_random", "coreset_dynunc", "report", "record"):
        assert len({n[key] for n in names}) == len(settings), key
    assert names[1]["train_dynunc"].endswith("train_dynunc_fraction0.3")
    # the produce and full-data runs depend on the processes only
    assert len({n["produce"] for n in names[:4]}) == 1 and names[4]["produce"].endswith("produce_nproc1")
    assert len({n["full"] for n in names[:4]}) == 1 and names[4]["full"] != names[0]["full"]
