"""Atomic file output: write to a temporary file in the same folder, then os.replace."""
import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator, Union

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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; give it open()'s mode
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
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
