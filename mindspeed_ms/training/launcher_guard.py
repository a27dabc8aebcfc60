"""msrun workers end when their launcher ends.

msrun starts each worker in its own session (`setsid`) and only forwards Ctrl+C; when the launcher
itself is killed (kill -9, SIGTERM, a lost terminal) its workers were re-parented and went on
training, writing into --save after the "kill". A worker therefore ties its life to the launcher:
on Linux the kernel sends it SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG), and on every
platform a daemon thread polls the parent pid and ends the process with a one-line message. Saves
are atomic, so a worker ended mid-save leaves `latest` on the previous complete checkpoint.
"""
from __future__ import annotations

import os
import signal
import sys
import threading

PR_SET_PDEATHSIG = 1
POLL_SECONDS = 0.5
_ROLES = ("MS_WORKER", "MS_SCHED")   # msrun's workers and its scheduler process both run the script

_armed = False


def _set_parent_death_signal() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int):
    while True:
        if os.getppid() != parent:
            sys.stderr.write(f"error: the msrun launcher (pid {parent}) has ended; stopping this worker "
                             f"(pid {os.getpid()})\n")
            sys.stderr.flush()
            os._exit(143)
        threading.Event().wait(POLL_SECONDS)


def follow_launcher(force: bool = False) -> bool:
    """Under msrun (or with `force`): end this process when its parent ends. Returns True if armed."""
    global _armed
    if _armed or not (force or os.environ.get("MS_ROLE") in _ROLES):
        return _armed
    parent = os.getppid()
    if parent == 1:           # the launcher is already gone (or this is not a launched worker)
        return False
    _set_parent_death_signal()
    if os.getppid() != parent:  # it died between the two calls: the kernel will not signal any more
        os._exit(143)
    threading.Thread(target=_watch, args=(parent,), name="launcher-guard", daemon=True).start()
    _armed = True
    return True
