"""data.prepare on small fake ImageNet-like trees, against independent computations."""
import bisect
import io
import os

import numpy as np
import pytest

from dynunc.lists.file_list import read_file_list
from data import prepare
from data.prepare import PLACEHOLDER_CLASS, main

# ------------------------------------------------------------------------- helpers


def make_tree(root, classes):
    """classes: {class dir: [file names]}; files are empty."""
    os.makedirs(root, exist_ok=True)
    for cls, files in classes.items():
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for name in files:
            open(os.path.join(root, cls, name), "wb").close()
    return str(root)


def expected_file_list(root, class_names):
    """Independent computation: plain os.listdir, sorted, hidden names dropped."""
    out = []
    for label, cls in enumerate(sorted(class_names)):
        images = sorted(n for n in os.listdir(os.path.join(root, cls)) if not n.startswith("."))
        out += [f"/{cls}/{img} {label}\n" for img in images]
    return "".join(out)


def temp_files(directory):
    return [n for n in os.listdir(directory) if n.endswith(".tmp")]


SYNSETS = ["n01440764", "n01443537", "n02084071", "n09999999", "n01530575"]


@pytest.fixture
def imagenet(tmp_path):
    classes = {
        s: [f"{s}_{i}.JPEG" for i in (10026, 2, 10, 1)] for s in SYNSETS
    }  # names that sort differently as text and as numbers
    classes["n01443537"].append(".DS_Store")
    root = make_tree(tmp_path / "train", classes)
    os.makedirs(os.path.join(root, "lost+found"))  # not a class (default pattern n*)
    os.makedirs(os.path.join(root, ".cache"))  # hidden: never a class
    open(os.path.join(root, "mapping_dict.txt"), "w").close()  # a file at ROOT: ignored
    return root


# ------------------------------------------------------------------------- file-list


def test_file_list_matches_independent_listing(imagenet, capsys):
    assert main(["file-list", imagenet, "--no-progress"]) == 0
    with open(os.path.join(imagenet, "file_list.txt")) as f:
        text = f.read()
    assert text == expected_file_list(imagenet, SYNSETS)
    assert text.splitlines()[0] == "/n01440764/n01440764_1.JPEG 0"
    assert ".DS_Store" not in text and "lost+found" not in text
    fl = read_file_list(os.path.join(imagenet, "file_list.txt"), num_classes=len(SYNSETS))
    assert len(fl) == 4 * len(SYNSETS)
    assert np.array_equal(np.bincount(fl.labels), [4] * len(SYNSETS))
    assert temp_files(imagenet) == []
    out = capsys.readouterr().out
    assert "20 images, 5 classes" in out and "lost+found" in out


def test_file_list_output_option_and_class_pattern(imagenet, tmp_path):
    out = str(tmp_path / "lists" / "all.txt")
    assert main(["file-list", imagenet, "--output", out, "--class-pattern", "*", "--no-progress"]) == 1  # lost+found is empty
    assert not os.path.exists(out)
    open(os.path.join(imagenet, "lost+found", "x.JPEG"), "w").close()
    assert main(["file-list", imagenet, "--output", out, "--class-pattern", "*", "--no-progress"]) == 0
    with open(out) as f:
        assert f.read() == expected_file_list(imagenet, SYNSETS + ["lost+found"])
    assert not os.path.exists(os.path.join(imagenet, "file_list.txt"))


def test_file_list_extensions(tmp_path):
    root = make_tree(tmp_path, {"n01": ["a.JPEG", "b.jpg", "c.txt", "d.png"], "n02": ["e.jpeg"]})
    assert main(["file-list", root, "--extensions", "jpeg,.JPG", "--no-progress"]) == 0
    with open(os.path.join(root, "file_list.txt")) as f:
        assert f.read() == "/n01/a.JPEG 0\n/n01/b.jpg 0\n/n02/e.jpeg 1\n"
    # a class left with nothing after the filter is an empty class
    assert main(["file-list", root, "--extensions", ".png", "--no-progress"]) == 1


def test_placeholder_gets_label_but_no_lines(tmp_path, capsys):
    classes = {"n04399381": ["a.JPEG"], PLACEHOLDER_CLASS: [], "n04399383": ["b.JPEG", "c.JPEG"]}
    root = make_tree(tmp_path, classes)
    assert main(["file-list", root, "--no-progress"]) == 0
    with open(os.path.join(root, "file_list.txt")) as f:
        assert f.read() == "/n04399381/a.JPEG 0\n/n04399383/b.JPEG 2\n/n04399383/c.JPEG 2\n"
    assert f"{PLACEHOLDER_CLASS} is empty: label 1" in capsys.readouterr().out


def test_empty_class_refused_and_existing_list_untouched(imagenet, capsys):
    target = os.path.join(imagenet, "file_list.txt")
    with open(target, "w") as f:
        f.write("previous content\n")
    os.makedirs(os.path.join(imagenet, "n05000000"))
    os.makedirs(os.path.join(imagenet, "n06000000"))
    open(os.path.join(imagenet, "n06000000", ".hidden"), "w").close()  # hidden only: still empty
    assert main(["file-list", imagenet, "--no-progress"]) == 1
    err = capsys.readouterr().err
    # every problem in one run, each naming its directory
    assert os.path.join(imagenet, "n05000000") in err and "empty class directory" in err
    assert os.path.join(imagenet, "n06000000") in err
    with open(target) as f:
        assert f.read() == "previous content\n"
    assert temp_files(imagenet) == []


def test_nested_directory_and_bad_names_refused(tmp_path, capsys):
    root = make_tree(tmp_path, {"n01": ["a.JPEG", "trailing "], "n02": ["b.JPEG"]})
    os.makedirs(os.path.join(root, "n02", "sub"))
    assert main(["file-list", root, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "'trailing ' ends in whitespace" in err
    assert "sub-directories" in err and "sub" in err
    assert not os.path.exists(os.path.join(root, "file_list.txt"))
    assert temp_files(root) == []


def test_no_class_directories(tmp_path, capsys):
    root = make_tree(tmp_path, {"cat": ["a.png"], "dog": ["b.png"]})
    assert main(["file-list", root, "--no-progress"]) == 1
    assert "--class-pattern '*'" in capsys.readouterr().err
    assert main(["file-list", str(tmp_path / "nope"), "--no-progress"]) == 1


def test_21k_without_placeholder_refused(tmp_path, capsys, monkeypatch):
    # As many classes as an ImageNet-21K release minus the placeholder: labels would shift.
    assert prepare._expected_21k_without_placeholder() == {21841: "Fall11", 19167: "Winter21"}
    monkeypatch.setattr(prepare, "_expected_21k_without_placeholder", lambda: {3: "Winter21"})
    root = make_tree(tmp_path, {c: ["a.JPEG"] for c in ("n01", "n02", "n03")})
    assert main(["file-list", root, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "Winter21" in err and "map-21k" in err and "off by one" in err
    os.makedirs(os.path.join(root, PLACEHOLDER_CLASS))
    assert main(["file-list", root, "--no-progress"]) == 0


def test_help_names_default_pattern(capsys):
    with pytest.raises(SystemExit):
        main(["file-list", "--help"])
    assert "default 'n*'" in " ".join(capsys.readouterr().out.split())


# --------------------------------------------------------------------------- map-21k


def make_21k_and_val(tmp_path, n21=29, val_pick=(0, 3, 17, 28), with_teddy=True):
    names_21k = [f"n{1000000 + 37 * i:08d}" for i in range(n21)]  # the placeholder is not among them
    train = make_tree(tmp_path / "21k", {c: [] for c in names_21k})
    val_names = [names_21k[i] for i in val_pick] + ([PLACEHOLDER_CLASS] if with_teddy else [])
    val = make_tree(tmp_path / "val", {c: ["x.JPEG"] for c in val_names})
    return train, val, names_21k, val_names


def test_map_21k_matches_searchsorted(tmp_path, capsys):
    train, val, names_21k, val_names = make_21k_and_val(tmp_path)
    args = ["map-21k", "--train-21k", train, "--val-1k", val, "--expect-classes", "30", "--expect-val-classes", "5"]
    assert main(args) == 0
    assert os.path.isdir(os.path.join(train, PLACEHOLDER_CLASS))
    all_21k = sorted(names_21k + [PLACEHOLDER_CLASS])
    expected = np.searchsorted(all_21k, sorted(val_names))
    assert [bisect.bisect_left(all_21k, c) for c in sorted(val_names)] == list(expected)
    path = os.path.join(train, "mapping_dict.txt")
    assert np.array_equal(np.loadtxt(path), expected)
    # byte-for-byte what the paper's np.savetxt(np.asarray(list_of_ints)) writes
    buf = io.BytesIO()
    np.savetxt(buf, np.asarray([int(i) for i in expected]))
    with open(path, "rb") as f:
        assert f.read() == buf.getvalue()
    with open(path) as f:
        assert f.readline() == f"{float(expected[0]):.18e}\n"
    assert temp_files(train) == []
    # idempotent: the placeholder now exists and is counted once
    assert main(args) == 0
    assert np.array_equal(np.loadtxt(path), expected)


def test_map_21k_missing_class_named(tmp_path, capsys):
    train, val, names_21k, _ = make_21k_and_val(tmp_path)
    os.makedirs(os.path.join(val, "n07777777"))
    args = ["map-21k", "--train-21k", train, "--val-1k", val, "--expect-classes", "30", "--expect-val-classes", "6"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "n07777777" in err and "no directory in the 21K training set" in err
    # nothing created or written when a check fails
    assert not os.path.exists(os.path.join(train, "mapping_dict.txt"))
    assert not os.path.exists(os.path.join(train, PLACEHOLDER_CLASS))


def test_map_21k_counts(tmp_path, capsys):
    train, val, _, _ = make_21k_and_val(tmp_path)
    assert main(["map-21k", "--train-21k", train, "--val-1k", val, "--release", "Fall11"]) == 1
    err = capsys.readouterr().err
    assert "30 class directories" in err and "expected 21842 (Fall11)." in err
    assert main(["map-21k", "--train-21k", train, "--val-1k", val]) == 1  # release inferred: none fits
    err = capsys.readouterr().err
    assert "21842 (Fall11)" in err and "19168 (Winter21)" in err
    args = ["map-21k", "--train-21k", train, "--val-1k", val, "--expect-classes", "30"]
    assert main(args) == 1  # 5 val classes, 1000 expected
    assert "expected 1000" in capsys.readouterr().err
    assert main(["map-21k", "--train-21k", train, "--val-1k", val, "--expect-classes", "31",
                 "--expect-val-classes", "5"]) == 1
    assert not os.path.exists(os.path.join(train, PLACEHOLDER_CLASS))


# ----------------------------------------------------------------------------- check


def test_check_clean_list_and_coreset(imagenet, tmp_path, capsys):
    assert main(["file-list", imagenet, "--no-progress"]) == 0
    full = os.path.join(imagenet, "file_list.txt")
    assert main(["check", full, "--num-classes", "5"]) == 0
    assert capsys.readouterr().out.strip().endswith("OK")
    with open(full) as f:
        lines = f.readlines()
    coreset = tmp_path / "coreset.txt"
    coreset.write_text("".join(lines[::3][::-1]))  # a subset, in another order
    assert main(["check", str(coreset), "--root", imagenet, "--dataset", "ImageNet-1K"]) == 0


def test_check_windows_list_with_byte_order_mark(imagenet, tmp_path, capsys):
    assert main(["file-list", imagenet, "--no-progress"]) == 0
    with open(os.path.join(imagenet, "file_list.txt"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    saved = tmp_path / "notepad.txt"
    saved.write_bytes(("\ufeff" + "\r\n".join(lines)).encode("utf-8"))  # no newline at the end
    assert main(["check", str(saved), "--root", imagenet, "--num-classes", "5"]) == 0
    assert capsys.readouterr().out.strip().endswith("OK")


def test_check_decode_reads_the_first_line_of_a_list_with_byte_order_mark(imagenet, tmp_path, capsys):
    """--decode reads the list as the check does: the mark is not part of the first path
    (the tree's files are empty, so every listed image is undecodable)."""
    assert main(["file-list", imagenet, "--no-progress"]) == 0
    with open(os.path.join(imagenet, "file_list.txt"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    saved = tmp_path / "notepad.txt"
    saved.write_bytes(("\ufeff" + "\r\n".join(lines)).encode("utf-8"))
    capsys.readouterr()
    assert main(["check", str(saved), "--root", imagenet, "--decode", "--no-progress", "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert f"decoded {len(lines)} images: 0 fine, {len(lines)} undecodable" in out
    assert f"{saved}:1: undecodable image {imagenet}{lines[0].rsplit(maxsplit=1)[0]}" in out


def test_check_refuses_a_label_too_large_for_training(tmp_path, capsys):
    """The label rule is the training reader's: int32 labels, so 2**31 is a problem."""
    root = make_tree(tmp_path / "tree", {"n01": ["a.JPEG"], "n02": ["b.JPEG"]})
    lst = tmp_path / "list.txt"
    lst.write_text("/n01/a.JPEG 0\n/n02/b.JPEG 2147483648\n")
    assert main(["check", str(lst), "--root", root]) == 1
    assert f"{lst}:2: label 2147483648 is too large (at most 2147483647)" in capsys.readouterr().out


def test_check_reports_every_problem_with_line_numbers(imagenet, tmp_path, capsys):
    lst = tmp_path / "list.txt"
    lst.write_text(
        "/n01440764/n01440764_1.JPEG 0\n"  # 1 ok
        "/n01440764/n01440764_2.JPEG 0\n"  # 2 ok
        "no-label-here\n"  # 3 format
        "/n01443537/n01443537_1.JPEG 9\n"  # 4 label out of range (and not its class's label)
        "\n"  # 5 blank: skipped
        "/n01443537/n01443537_2.JPEG 1\n"  # 6 ok
        "/n01443537/n01443537_10.JPEG 1\n"  # 7 ok
        "/n01440764/missing.JPEG 0\n"  # 8 missing file
        "n01440764//n01440764_1.JPEG 0\n"  # 9 duplicate of line 1 (same path once normalized)
        "/n01530575/n01530575_1.JPEG x\n"  # 10 label not an integer
        "/n09999999/n09999999_1.JPEG -1\n"  # 11 negative label
        "/n02084071/n02084071_1.JPEG 2\n"  # 12 ok
        "/n00000000/a.JPEG 3\n"  # 13 directory missing; label order: sorts first but label 3
        "/../etc/passwd 1\n"  # 14 outside the root
    )
    assert main(["check", str(lst), "--root", imagenet, "--num-classes", "5"]) == 1
    out = capsys.readouterr().out
    bad = {int(l.split(":")[1]) for l in out.splitlines() if l.startswith(f"{lst}:") and l.split(":")[1].isdigit()}
    assert bad == {3, 4, 8, 9, 10, 11, 13, 14}
    assert f"{lst}:3: expected '<relative path> <label>'" in out
    assert f"{lst}:4: label 9 is outside [0, 5)" in out
    assert f"{lst}:8: no such file: {os.path.join(imagenet, 'n01440764', 'missing.JPEG')}" in out
    assert f"{lst}:9: /n01440764/n01440764_1.JPEG is listed already on line 1" in out
    assert f"{lst}:10: label 'x' is not an integer" in out
    assert f"{lst}:11: label -1 is outside" in out
    assert f"{lst}:13: {os.path.join(imagenet, 'n00000000')}: no such directory" in out
    assert f"{lst}:13: /n00000000/ has label 3" in out
    assert f"{lst}:14: path '/../etc/passwd' leads outside the data root" in out
    # problems come out in line order, then the summary
    numbers = [int(l.split(":")[1]) for l in out.splitlines() if l.split(":")[1].isdigit()]
    assert numbers == sorted(numbers)
    assert "13 entries" in out and "problems" in out.splitlines()[-1]


def test_check_without_num_classes_and_empty_list(imagenet, tmp_path, capsys):
    lst = tmp_path / "list.txt"
    lst.write_text("/n01440764/n01440764_1.JPEG 123\n")
    assert main(["check", str(lst), "--root", imagenet]) == 0  # no bound given: any label >= 0
    lst.write_text("\n\n")
    assert main(["check", str(lst), "--root", imagenet]) == 1
    assert "no entries" in capsys.readouterr().out
    assert main(["check", str(tmp_path / "absent.txt"), "--root", imagenet]) == 1
    assert main(["check", str(lst), "--root", str(tmp_path / "absent")]) == 1


def test_check_roundtrip_file_list_default_root(tmp_path):
    root = make_tree(tmp_path, {"n02": ["b.JPEG", "a.JPEG"], "n01": ["c.JPEG"], PLACEHOLDER_CLASS: []})
    assert main(["file-list", root, "--no-progress"]) == 0
    assert main(["check", os.path.join(root, "file_list.txt"), "--num-classes", "3"]) == 0


def test_check_label_order_and_class_consistency(tmp_path, capsys):
    make_tree(tmp_path, {c: ["a.JPEG", "b.JPEG"] for c in ("n01", "n02", "n03", "n04")})
    lst = tmp_path / "list.txt"
    lst.write_text(
        "/n01/a.JPEG 0\n/n01/b.JPEG 0\n"
        "/n02/a.JPEG 2\n/n02/b.JPEG 2\n"  # lines 3-4: n02 and n03 swapped labels
        "/n03/a.JPEG 1\n/n03/b.JPEG 3\n"  # line 6: n03 has two labels
        "/n04/a.JPEG 3\n"
    )
    assert main(["check", str(lst), "--num-classes", "4"]) == 1
    out = capsys.readouterr().out
    assert "problems (class-label 1, order 1)" in out
    assert f"{lst}:6: label 3 differs from label 1, which most lines of /n03/ have (first on line 5)" in out
    assert "out of order" in out


def test_undecodable_file_name_refused(tmp_path, capsys):
    root = make_tree(tmp_path, {"n01": ["a.JPEG"]})
    try:
        os.close(os.open(os.path.join(os.fsencode(root), b"n01", b"\xff.JPEG"), os.O_CREAT | os.O_WRONLY))
    except OSError:
        pytest.skip("the file system refuses non-UTF-8 names")
    assert main(["file-list", root, "--no-progress"]) == 1
    assert "is not valid UTF-8" in capsys.readouterr().err
