"""One live run per output folder.

Rank 0 takes an exclusive POSIX record lock (``fcntl.lockf``) on ``OUTPUT/.run.lock``
before anything else is written into OUTPUT, and holds it until the run ends. A second
run on the same folder is refused at once, naming the folder and the process (pid and
host) written in the lock file.

What is guaranteed, and why:
- The kernel drops the lock when the holding process dies, however it dies (SIGKILL, OOM,
  a torchrun elastic restart, which stops every worker before it starts the next group),
  so a lock file left by a dead run never blocks a restart: only a live holder counts.
  The file itself stays; its content is just the last holder's description.
- POSIX locks belong to a process and are not inherited by forked children, so a helper
  process that outlives rank 0 cannot keep the folder locked.
- Several nodes on a shared filesystem: only the global rank 0 locks, and the lock is
  seen by every client of a filesystem that implements POSIX locks across clients (NFSv4,
  NFSv3 with lockd, Lustre mounted with ``flock``, GPFS, CephFS). After a node crash the
  server releases the lock when the client's lease expires (NFSv4: about 90 s). Where the
  filesystem has no lock support, the run goes on with a warning and no protection.
"""
import errno
import logging
import os
import socket
import time
from typing import Optional

import torch.distributed as dist

from dynunc.distributed import is_distributed

logger = logging.getLogger(__name__)

LOCK_NAME = ".run.lock"
_CONFLICT = (errno.EACCES, errno.EAGAIN)


class OutputInUseError(RuntimeError):
    """Another live run holds the output folder."""


class OutputLock:
    """The lock on one output folder, held by this process until `release()`."""

    def __init__(self, output: str):
        self.output = output
        self.path = os.path.join(output, LOCK_NAME)
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        """Take the lock or raise OutputInUseError naming the folder and its holder."""
        import fcntl

        os.makedirs(self.output, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in _CONFLICT:
                raise OutputInUseError(
                    f"output folder {self.output} is in use by another run ({self._holder()}, lock file "
                    f"{self.path}); wait for it to end or choose another --output") from None
            logger.warning(f"{self.path}: the filesystem does not support locks ({e.strerror}); nothing stops "
                           f"a second run from writing into {self.output}")
            return
        self._fd = fd
        description = f"pid {os.getpid()} on host {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, (description + "\n").encode(), 0)
        os.fsync(fd)

    def _holder(self) -> str:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                text = f.read().strip()
        except OSError:
            text = ""
        return text or "holder unknown"

    def release(self) -> None:
        """Drop the lock (closing the file releases it). The file stays: removing it would
        race with a run that has just opened it."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def in_use(output: str) -> bool:
    """Whether a live run holds the lock on `output` (or whether it cannot be told, for a
    lock file this process may not open); creates nothing."""
    import fcntl

    try:
        fd = os.open(os.path.join(output, LOCK_NAME), os.O_RDWR)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        return e.errno in _CONFLICT
    finally:
        os.close(fd)  # releases the lock if it was taken
    return False


def lock_output(output: str, rank: int) -> OutputLock:
    """Rank 0 locks `output`; every rank raises OutputInUseError if that failed, so the
    whole group stops before writing anything into the folder."""
    lock = OutputLock(output)
    error = None
    if rank == 0:
        try:
            lock.acquire()
        except OutputInUseError as e:
            error = str(e)
    if is_distributed():
        shared = [error]
        dist.broadcast_object_list(shared, src=0)
        error = shared[0]
    if error is not None:
        raise OutputInUseError(error)
    return lock
