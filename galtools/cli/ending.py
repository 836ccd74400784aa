"""How a run ends when it is stopped from outside: SIGTERM and SIGHUP unwind a command as Ctrl-C does (so every
output being written is removed), and a full disk is one line naming the device."""
from __future__ import annotations

import os
import signal
import sys
import threading

from galtools.errors import Terminated

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


_HANDLER_PID: list[int] = []   # the process that installed the handlers (forked workers inherit them)


def _on_stop_signal(signum, frame) -> None:
    if _HANDLER_PID and os.getpid() != _HANDLER_PID[0]:   # a forked worker: die as it would have by default
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    for other in STOP_SIGNALS:            # a second signal must not interrupt the clean-up of the first
        signal.signal(other, signal.SIG_IGN)
    raise Terminated(signum, signal.Signals(signum).name)


def install_stop_signals() -> None:
    """SIGTERM (Slurm's time limit, preemption, kill) and SIGHUP (a closed terminal) unwind the command as Ctrl-C
    does, so every output being written is removed. A signal the parent ignores (nohup) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        return
    _HANDLER_PID[:] = [os.getpid()]
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _on_stop_signal)


def no_space_line(exc: OSError) -> str:
    """A full disk met outside an output table (stdout on /dev/full, a library's own file)."""
    from galtools.io.files import mount_point

    if getattr(exc, "filename", None):
        return (f"no space left on {mount_point(str(exc.filename))} while writing {exc.filename} "
                "(free some space, or write elsewhere)")
    return "no space left on device while writing standard output (free some space, or write elsewhere)"


def exit_past_busy_threads(code: int) -> None:
    """After an interruption, a reader thread may still be blocked on stdin holding its lock, and the interpreter
    would abort at shutdown (SIGABRT) instead of exiting with ``code``. Run the exit handlers (they remove
    spooled copies of stdin) and leave at once. Without such threads, the caller exits normally."""
    others = [t for t in threading.enumerate() if t is not threading.current_thread() and t.is_alive()]
    if not others or threading.current_thread() is not threading.main_thread():
        return
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):   # a closed or full stream: nothing more can be said on it
            continue
    os._exit(code)
