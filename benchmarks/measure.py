"""What the benchmarks measure, measured one way: wall time, CPU time (user + system,
every thread) and peak RSS, of a child process or of this process with the children it
has waited for. The time per call of a function is engine.py's `seconds_per_call` (the
one the training log's throughput uses).

A child's peak RSS from wait4 counts the memory of the process that spawned it (a new
process starts as a copy, and Linux keeps that copy's resident size as a peak across
exec), so a benchmark holding a large history would inflate its children's figures.
`Child` therefore starts the command from a small intermediate process (this file run
as a script, about 10 MiB) that waits for it and reports the command's own usage.
"""
import json
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
    """A command started now (through the intermediate process above); `wait` gives its
    own usage and output. Output goes to temporary files, so that several children may
    run at once without filling a pipe."""

    def __init__(self, argv: Sequence[str], cwd: Optional[str] = None):
        self.argv = [str(a) for a in argv]
        self._files = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self._usage, usage_w = os.pipe()
        self.proc = subprocess.Popen([sys.executable, "-S", os.path.abspath(__file__), str(usage_w), *self.argv],
                                     cwd=cwd, stdout=self._files[0], stderr=self._files[1], pass_fds=(usage_w,))
        os.close(usage_w)

    def wait(self, check: bool = True) -> Run:
        """The run's measures and output; with `check`, exit naming the command if it failed."""
        with os.fdopen(self._usage, "r") as f:
            usage = f.read()
        self.proc.wait()
        texts = []
        for f in self._files:
            f.seek(0)
            texts.append(f.read())
            f.close()
        if not usage:  # the command could not be started
            sys.exit(f"{' '.join(self.argv)} could not be run:\n{texts[1][-3000:]}")
        run = Run(**json.loads(usage), stdout=texts[0], stderr=texts[1])
        if check and run.returncode != 0:
            sys.exit(f"{' '.join(self.argv)} failed ({run.returncode}):\n{texts[0]}\n{texts[1][-3000:]}")
        return run


def run_child(argv: Sequence[str], cwd: Optional[str] = None, check: bool = True) -> Run:
    return Child(argv, cwd).wait(check)


def this_process(start: float) -> Run:
    """Wall time since `start` (a time.perf_counter()), CPU time and peak RSS of this
    process and of the children it has waited for (DataLoader workers, say)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    return Run(time.perf_counter() - start, cpu, max(own.ru_maxrss, children.ru_maxrss) / 1024)


if __name__ == "__main__":  # the intermediate process: python measure.py FD COMMAND...
    started = time.perf_counter()
    command = subprocess.Popen(sys.argv[2:])  # stdout and stderr: this process's, the parent's files
    _, status, rusage = os.wait4(command.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    with os.fdopen(int(sys.argv[1]), "w") as out:
        json.dump({"wall_s": time.perf_counter() - started, "cpu_s": rusage.ru_utime + rusage.ru_stime,
                   "peak_rss_mib": rusage.ru_maxrss / 1024, "returncode": code}, out)
    sys.exit(0)
