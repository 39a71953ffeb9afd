"""Ctrl-C that always reaches the main thread.

CPython runs Python-level signal handlers in the main thread, but the kernel may hand a
process-directed SIGINT to any thread (a thread-pool worker, a BLAS thread). The C-level
handler then only sets a flag, and a main thread blocked in a system call (reading a
history file from a stalled network filesystem, or a named pipe) never looks at it: the
command hangs until the read returns. The same happens when the signal lands between
Python's last check and the blocking call.

`deliver_interrupts_to_main_thread()` closes both gaps: every signal that reaches the
C-level handler also writes its number to a wake-up pipe (signal.set_wakeup_fd); a
watcher thread reads it and, until the main thread has raised KeyboardInterrupt, sends
SIGINT to the main thread itself (pthread_kill), which interrupts its system call.

`run_command(prog, work)` runs a command's work under that handler and the commands'
shared ending: a refusal is one line and exit 2, Ctrl-C exit 130.
"""
import os
import signal
import sys
import threading
from typing import Callable

_RESEND_SECONDS = 0.2
_installed = False


def deliver_interrupts_to_main_thread() -> None:
    """Install the SIGINT handler and its watcher; call once, from the main thread of a
    command, before its work starts (the handler raises KeyboardInterrupt as the default
    one does). Later calls in the same process, and calls from other threads (a command's
    main() run inside a test's thread), do nothing."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    raised = threading.Event()
    main_ident = threading.main_thread().ident

    def on_sigint(signum, frame):
        raised.set()
        raise KeyboardInterrupt

    def watch() -> None:
        while True:
            try:
                received = os.read(read_end, 64)
            except OSError:
                return
            if not received:
                return
            if signal.SIGINT in received:
                # The main thread may be blocked in a system call the signal did not interrupt.
                while not raised.wait(_RESEND_SECONDS) and threading.main_thread().is_alive():
                    signal.pthread_kill(main_ident, signal.SIGINT)

    _installed = True
    signal.signal(signal.SIGINT, on_sigint)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    # The watcher inherits a mask that blocks SIGINT: it is never the thread to handle one.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        threading.Thread(target=watch, name="interrupt-watcher", daemon=True).start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def run_command(prog: str, work: Callable[[], int]) -> int:
    """`work()`'s exit code, Ctrl-C delivered to the main thread. A ValueError (every
    refusal: HistoryError, FileListError, PathError, a bad value) is one line on stderr,
    "PROG: error: ...", and exit 2; Ctrl-C is exit 130, saying that no output was replaced
    (the commands write every output atomically at their end)."""
    deliver_interrupts_to_main_thread()
    try:
        return work()
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; no output was replaced", file=sys.stderr)
        return 130
