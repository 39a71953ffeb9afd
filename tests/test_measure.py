"""benchmarks/measure.py: a child's own wall time, CPU time, peak RSS and output."""
import sys

import pytest

from benchmarks.measure import Child, run_child, this_process


def test_a_child_is_measured_on_its_own():
    # 96 MiB written page by page: the child's peak RSS holds them, whatever the parent's
    code = "b = bytearray(96 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\nprint('done')"
    run = run_child([sys.executable, "-c", code])
    assert run.returncode == 0 and run.stdout == "done\n" and run.stderr == ""
    assert run.peak_rss_mib >= 96 and run.cpu_s > 0 and run.wall_s > 0
    small = run_child([sys.executable, "-c", "print('small')"])
    # its own peak: neither the largest child so far (RUSAGE_CHILDREN) nor this big process's
    # resident memory, which a child spawned from here directly starts with (pytest and torch)
    assert small.peak_rss_mib < min(run.peak_rss_mib, this_process(0.0).peak_rss_mib)
    assert "peak RSS" in run.summary()


def test_concurrent_children_and_failures():
    children = [Child([sys.executable, "-c", f"import sys; print({i}); sys.exit({i})"]) for i in range(3)]
    runs = [child.wait(check=False) for child in children]
    assert [(r.returncode, r.stdout) for r in runs] == [(0, "0\n"), (1, "1\n"), (2, "2\n")]
    with pytest.raises(SystemExit, match=r"failed \(3\)"):
        run_child([sys.executable, "-c", "import sys; sys.exit(3)"])
    with pytest.raises(SystemExit, match="no-such-command could not be run"):
        run_child(["no-such-command"])
    assert this_process(0.0).peak_rss_mib > 0
