"""The path arguments of the commands, checked before any work: one line naming the flag,
the path and what is wrong, raised as PathError (a ValueError, which every command
already turns into exit code 2 with nothing written).

- an input file: it exists, is not a folder, and can be read;
- an input folder: it exists, is a folder, and can be listed;
- an output file: it is not a folder; if it exists it can be replaced; its folder, or
  the nearest of its parents that exists (missing ones are created when writing), is a
  folder that can be written to;
- an output folder: it is not a file; if it exists it can be written to; else its
  nearest existing parent is a folder that can be written to.

Writability is asked of the kernel (os.access), which also sees a read-only mount; a
process running as root passes every permission check but that one.
"""
import os
from typing import Optional

READ, WRITE = os.R_OK, os.W_OK | os.X_OK


class PathError(ValueError):
    """A path argument that cannot be used: the message is the whole line to print."""


def _say(flag: Optional[str], path: str, problem: str) -> PathError:
    return PathError(f"{flag} {path}: {problem}" if flag else f"{path}: {problem}")


def _nearest_existing(path: str) -> str:
    """`path` itself if it exists (as anything, a dangling link included), else its
    nearest parent that does."""
    current = os.path.abspath(path)
    while not os.path.lexists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def check_input_file(flag: Optional[str], path: str, what: str = "a file") -> None:
    if not os.path.exists(path):
        ancestor = _nearest_existing(os.path.dirname(os.path.abspath(path)))
        if os.path.exists(ancestor) and not os.path.isdir(ancestor):
            raise _say(flag, path, f"not found: {ancestor} is a file, not a folder")
        raise _say(flag, path, "not found")
    if os.path.isdir(path):
        raise _say(flag, path, f"is a folder; {what} is expected")
    if not os.access(path, READ):
        raise _say(flag, path, "cannot be read (permission denied)")


def check_input_folder(flag: Optional[str], path: str, what: str = "a folder") -> None:
    if not os.path.exists(path):
        raise _say(flag, path, "not found")
    if not os.path.isdir(path):
        raise _say(flag, path, f"is a file; {what} is expected")
    if not os.access(path, READ | os.X_OK):
        raise _say(flag, path, "cannot be read (permission denied)")


def check_input(flag: Optional[str], path: str) -> None:
    """A file or a folder that exists and can be read."""
    if os.path.isdir(path):
        check_input_folder(flag, path)
    else:
        check_input_file(flag, path)


def _check_creatable(flag: Optional[str], path: str) -> None:
    """`path` does not exist: its nearest existing parent must be a writable folder."""
    ancestor = _nearest_existing(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(ancestor):
        raise _say(flag, path, f"cannot be created: {ancestor} is a file, not a folder")
    if not os.access(ancestor, WRITE):
        raise _say(flag, path, f"cannot be created: the folder {ancestor} is not writable")


def check_output_file(flag: Optional[str], path: str, what: str = "a file") -> None:
    if os.path.isdir(path):
        raise _say(flag, path, f"is a folder; {what} is expected (give a file name)")
    if os.path.lexists(path):
        # replaced through a temporary file beside it: the folder must be writable
        folder = os.path.dirname(os.path.abspath(path))
        if not os.access(folder, WRITE):
            raise _say(flag, path, f"cannot be replaced: the folder {folder} is not writable")
        return
    _check_creatable(flag, path)


def check_output_folder(flag: Optional[str], path: str, what: str = "a folder") -> None:
    if os.path.lexists(path) and not os.path.isdir(path):
        raise _say(flag, path, f"exists as a file; {what} is expected (give another {flag or 'folder'})")
    if os.path.isdir(path):
        if not os.access(path, WRITE):
            raise _say(flag, path, "is not writable")
        return
    _check_creatable(flag, path)


def check_arguments(args, in_files=(), in_folders=(), in_any=(), out_files=(), out_folders=()) -> None:
    """Check the named attributes of a parsed command line (those that are set), the flag
    being ``--`` + the attribute's name, in the order given here."""
    checks = ((in_files, check_input_file), (in_folders, check_input_folder), (in_any, check_input),
              (out_files, check_output_file), (out_folders, check_output_folder))
    for names, check in checks:
        for name in names:
            value = getattr(args, name, None)
            if value:
                check(f"--{name}", str(value))
