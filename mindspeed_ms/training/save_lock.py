"""One training per --save directory: a lock file holding the owner's pid and host.

Two runs writing the same --save would mix their checkpoints and remove each other's temporary
save directories mid-write. The first run takes `<save>/.mindspeed-ms.lock`: an exclusive `flock`
on the open file (released by the kernel when the process dies, however it dies) plus a JSON line
naming pid, host and start time, so that a second run can say who holds it. A lock whose holder is
gone (flock free, or the recorded pid dead on this host) is stale and taken over. The lock is held
until the process exits; on a normal exit the file is removed.
"""
from __future__ import annotations

import atexit
import json
import os
import socket
import time

LOCK_NAME = ".mindspeed-ms.lock"

_held = {}   # realpath of the save directory -> open file object of its lock


class SaveLockError(ValueError):
    """--save is in use by another live training run."""


def lock_path(save: str) -> str:
    return os.path.join(str(save), LOCK_NAME)


def _read(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.loads(f.read() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True      # exists, another user's
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def _describe(owner: dict, path: str) -> str:
    started = owner.get("started")
    when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) \
        else ""
    return f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}{when} (lock file {path})"


def held_by_other(save: str) -> bool:
    """True when `save`'s lock names a live process other than this one (another host: assumed live)."""
    path = lock_path(save)
    owner = _read(path)
    here = socket.gethostname()
    if not owner or (owner.get("pid") == os.getpid() and owner.get("host") == here):
        return False
    if owner.get("host") == here:
        return _pid_alive(owner.get("pid")) and (_recorded_flock_missing() or _flock_taken(path))
    return True


def _flock_taken(path: str) -> bool:
    """True when another open file holds the flock of `path` (False where flock is unavailable)."""
    try:
        import fcntl
    except ImportError:
        return False
    if os.path.realpath(os.path.dirname(path)) in _held:
        return False
    try:
        with open(path, "a+") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    except OSError:
        return False
    return False


def acquire(save: str, what: str = "--save") -> str:
    """Take the lock of `save` (created if missing) for the rest of this process; returns the lock path.

    Raises SaveLockError naming the lock file and the other process when a live run holds it."""
    save = str(save)
    key = os.path.realpath(save)
    if key in _held:
        return lock_path(save)
    os.makedirs(save, exist_ok=True)
    path = lock_path(save)
    f = open(path, "a+", encoding="utf-8")
    try:
        import fcntl
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = _read(path)
            f.close()
            raise SaveLockError(f"{what} {save} is in use by another training run: {_describe(owner, path)}. Wait "
                                f"for it to finish, stop it, or choose another {what} directory") from None
    except ImportError:      # no flock (not Linux/macOS): the recorded pid is the only evidence
        pass
    owner = _read(path)
    here = socket.gethostname()
    if owner and owner.get("pid") != os.getpid():
        same_host = owner.get("host") == here
        if (same_host and _pid_alive(owner.get("pid")) and _recorded_flock_missing()) or \
                (not same_host and owner.get("host")):
            f.close()
            extra = "" if same_host else ("; that host's process cannot be checked from here: if it has ended, "
                                          f"delete {path}")
            raise SaveLockError(f"{what} {save} is in use by another training run: {_describe(owner, path)}. Wait "
                                f"for it to finish, stop it, or choose another {what} directory{extra}")
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": here, "started": time.time()}) + "\n")
    f.flush()
    _held[key] = f
    atexit.register(release, save)
    return path


def _recorded_flock_missing() -> bool:
    # With a working flock, an acquired flock proves the recorded process no longer holds the lock
    # (a live pid is then an unrelated process that reused the number); without flock, trust the pid.
    try:
        import fcntl  # noqa: F401
        return False
    except ImportError:
        return True


def release(save: str):
    """Drop this process's lock on `save` (removes the lock file if it still names this process)."""
    key = os.path.realpath(str(save))
    f = _held.pop(key, None)
    if f is None:
        return
    path = lock_path(save)
    try:
        owner = _read(path)
        if owner.get("pid") == os.getpid():
            os.remove(path)
    except OSError:
        pass
    finally:
        f.close()
