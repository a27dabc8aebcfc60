"""The launcher's death ends its workers within seconds: a launcher that starts workers as msrun does
(own session, MS_ROLE=MS_WORKER) is killed with SIGKILL or SIGTERM; and with the real msrun (slow)."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# what each worker runs: the entry points' first call (dist_env), then "training" forever
WORKER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    from mindspeed_ms.training.backend import dist_env
    dist_env()
    with open(os.path.join({out!r}, f"worker-{{os.getpid()}}"), "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(0.05)
""")

# msrun's way of starting a worker: Popen in a new session with MS_ROLE=MS_WORKER
LAUNCHER = textwrap.dedent("""
    import os, subprocess, sys, time
    env = dict(os.environ, MS_ROLE="MS_WORKER", MS_WORKER_NUM="2")
    for i in range(2):
        subprocess.Popen([sys.executable, {worker!r}], env=dict(env, MS_NODE_ID=str(i)), preexec_fn=os.setsid)
    while True:
        time.sleep(1)
""")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie of an exited process counts as ended
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _wait_workers(out, n, timeout=60):
    t0 = time.time()
    while time.time() - t0 < timeout:
        pids = [int(open(os.path.join(out, f)).read() or 0) for f in os.listdir(out) if f.startswith("worker-")]
        if len(pids) == n and all(pids):
            return pids
        time.sleep(0.1)
    raise AssertionError(f"workers did not start: {os.listdir(out)}")


def _ended_within(pids, seconds):
    t0 = time.time()
    while time.time() - t0 < seconds:
        if not any(_alive(p) for p in pids):
            return time.time() - t0
        time.sleep(0.05)
    for p in pids:
        if _alive(p):
            os.kill(p, signal.SIGKILL)
    raise AssertionError(f"workers {pids} still running {seconds} s after the launcher died")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_launcher_death_ends_workers(tmp_path, sig):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format(root=ROOT, out=str(tmp_path)))
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER.format(worker=str(worker))])
    try:
        pids = _wait_workers(str(tmp_path), 2)
        assert all(_alive(p) for p in pids)
        time.sleep(0.5)
        assert all(_alive(p) for p in pids)       # the guard does not end a worker whose launcher lives
        launcher.send_signal(sig)
        launcher.wait(timeout=10)
        assert _ended_within(pids, 5) < 5
    finally:
        if launcher.poll() is None:
            launcher.kill()


def test_guard_is_off_outside_msrun(monkeypatch):
    from mindspeed_ms.training import launcher_guard
    monkeypatch.delenv("MS_ROLE", raising=False)
    monkeypatch.setattr(launcher_guard, "_armed", False)
    assert launcher_guard.follow_launcher() is False


@pytest.mark.slow
def test_real_msrun_killed_ends_workers(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format(root=ROOT, out=str(tmp_path)))
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    ms = subprocess.Popen(["msrun", "--worker_num=2", "--local_worker_num=2", "--master_port=8147",
                           f"--log_dir={tmp_path}/log", "--join=False", str(worker)], env=env, cwd=str(tmp_path),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pids = _wait_workers(str(tmp_path), 3, timeout=120)   # 2 workers + msrun's scheduler process
        time.sleep(1)
        ms.send_signal(signal.SIGKILL)
        ms.wait(timeout=10)
        assert _ended_within(pids, 5) < 5
    finally:
        if ms.poll() is None:
            ms.kill()
