"""Atomic file output: write to a temporary file in the same folder, then os.replace.

Temporary files are named ``.{name}.{random}.tmp`` beside their target ``name``; a
process killed with SIGKILL leaves its temporary behind, and `remove_stale_temporaries`
lets the next writer of the same target remove exactly those.
"""
import contextlib
import os
import re
import signal
import tempfile
import threading
from pathlib import Path
from typing import IO, Iterator, List, Tuple, Union

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file beside `path`; on a clean exit it replaces `path`.

    A crash (or an exception inside the block) leaves `path` untouched and removes
    the temporary file, so readers never see a half-written file. A failing write (disk
    full, quota, I/O error) raises OSError with the same errno and a message naming
    `path`, which the bare error from write(2) does not.
    """
    path = Path(path)
    tmp = None
    try:
        with _signals_held():  # a SIGINT right after the file is made would leak it
            fd, tmp = _temporary_beside(path)
            f = os.fdopen(fd, mode, **kwargs)
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(e, OSError):
            raise named_write_error(e, path) from e
        raise


def named_write_error(error: OSError, path: PathLike) -> OSError:
    """`error` (same errno, hence the same OSError subclass) with a message naming `path`."""
    reason = error.strerror or str(error)
    message = f"cannot write {path}: {reason}; the previous {Path(path).name}, if any, is unchanged"
    return OSError(error.errno, message) if error.errno is not None else OSError(message)


def _temporary_beside(path: Path) -> Tuple[int, str]:
    """(fd, name) of a new temporary file ``.{name}.{random}.tmp`` beside `path`, with
    open()'s file mode (mkstemp makes it 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, tmp


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save_npy(path: PathLike, array) -> None:
    """np.save through atomic_open (np.save would append '.npy' to a temp name)."""
    import numpy as np

    with atomic_open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def atomic_write_text(path: PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def remove_stale_temporaries(path: PathLike) -> List[str]:
    """Delete the temporary files that writing `path` atomically leaves when the writer
    is killed (``.{name}.{random}.tmp`` beside it, `random` without dots, so that the
    temporaries of ``name.other`` do not match). Returns the names removed. Only for a
    target that no other process is writing at the same time."""
    path = Path(path)
    pattern = re.compile(r"\." + re.escape(path.name) + r"\.[A-Za-z0-9_]+\.tmp")
    removed = []
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return removed
    for name in names:
        if pattern.fullmatch(name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path.parent / name)
                removed.append(name)
    return removed


class AtomicGroup:
    """Several outputs that replace their targets together: each is written in full to a
    temporary file first; `commit` then renames them all, with SIGINT and SIGTERM held
    back meanwhile, so an interruption leaves either every old file or every new one
    (SIGKILL during the renames, a window of microseconds, is the exception)."""

    def __init__(self):
        self._staged: List[Tuple[str, Path]] = []
        self._created: List[str] = []  # every temporary file made, until renamed or removed

    @contextlib.contextmanager
    def open(self, path: PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
        path = Path(path)
        with _signals_held():  # a SIGINT between creating the file and noting it would leak it
            fd, tmp = _temporary_beside(path)
            self._created.append(tmp)
            f = os.fdopen(fd, mode, **kwargs)
        try:
            with f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        except BaseException as e:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            if isinstance(e, OSError):
                raise named_write_error(e, path) from e
            raise
        self._staged.append((tmp, path))

    def save_npy(self, path: PathLike, array) -> None:
        import numpy as np

        with self.open(path, "wb") as f:
            np.save(f, array, allow_pickle=False)

    def commit(self) -> None:
        with _signals_held():
            while self._staged:
                tmp, path = self._staged.pop(0)
                os.replace(tmp, path)
                self._created.remove(tmp)

    def discard(self) -> None:
        """Remove every temporary file this group made that was not renamed."""
        self._staged.clear()
        while self._created:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._created.pop())


@contextlib.contextmanager
def atomic_group() -> Iterator[AtomicGroup]:
    """``with atomic_group() as g: with g.open(a) as f: ...; g.save_npy(b, x)``: a and b
    replace their targets when the block ends cleanly; on any exception (or
    KeyboardInterrupt) neither does and no temporary file remains."""
    group = AtomicGroup()
    try:
        yield group
    except BaseException:
        group.discard()
        raise
    try:
        group.commit()
    finally:
        group.discard()  # only what a failed rename left


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back until the block ends, then deliver the first one that
    arrived to the handler that was in place. Python-level handlers (a thread mask would
    not do: the kernel may hand a process signal to any thread, e.g. a BLAS worker).
    Main thread only; elsewhere signals are not held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: List[int] = []
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if handler is not None:  # None: installed outside Python, cannot be restored
            previous[sig] = signal.signal(sig, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if held:
            signal.raise_signal(held[0])
