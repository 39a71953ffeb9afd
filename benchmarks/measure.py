"""What the benchmarks measure, measured one way: wall time, CPU time (user + system,
every thread) and peak RSS, of a child process (its own rusage, from os.wait4) or of
this process with the children it has waited for. The time per call of a function is
engine.py's `seconds_per_call` (the one the training log's throughput uses)."""
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Optional, Sequence


@dataclass(frozen=True)
class Run:
    wall_s: float
    cpu_s: float
    peak_rss_mib: float  # ru_maxrss, KiB on Linux
    returncode: int = 0
    stdout: str = ""
    stderr: str = ""

    def summary(self) -> str:
        return f"wall {self.wall_s:.2f} s, CPU {self.cpu_s:.2f} s, peak RSS {self.peak_rss_mib:.0f} MiB"


class Child:
    """A child process started now; `wait` gives its own usage (getrusage(RUSAGE_CHILDREN)
    would give the largest peak over every child waited for so far). Its output goes to
    temporary files, so that several may run at once without filling a pipe."""

    def __init__(self, argv: Sequence[str], cwd: Optional[str] = None):
        self.argv = [str(a) for a in argv]
        self._files = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self.start = time.perf_counter()
        self.proc = subprocess.Popen(self.argv, cwd=cwd, stdout=self._files[0], stderr=self._files[1], text=True)

    def wait(self, check: bool = True) -> Run:
        """The run's measures and output; with `check`, exit naming the command if it failed."""
        _, status, usage = os.wait4(self.proc.pid, 0)
        wall = time.perf_counter() - self.start
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        texts = []
        for f in self._files:
            f.seek(0)
            texts.append(f.read())
            f.close()
        if check and self.proc.returncode != 0:
            sys.exit(f"{' '.join(self.argv)} failed ({self.proc.returncode}):\n{texts[0]}\n{texts[1][-3000:]}")
        return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, self.proc.returncode, *texts)


def run_child(argv: Sequence[str], cwd: Optional[str] = None, check: bool = True) -> Run:
    return Child(argv, cwd).wait(check)


def this_process(start: float) -> Run:
    """Wall time since `start` (a time.perf_counter()), CPU time and peak RSS of this
    process and of the children it has waited for (DataLoader workers, say)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    return Run(time.perf_counter() - start, cpu, max(own.ru_maxrss, children.ru_maxrss) / 1024)
