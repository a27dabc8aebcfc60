"""--save before compute: the lock (a second run refuses naming the lock and the other process; a
stale lock of a dead process is taken over; another run's temporary save is never removed), a
writable directory, and free space for one checkpoint."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import namedtuple

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from train_synthetic import ROOT, small_model_json  # noqa: E402

from mindspeed_ms.arguments import ArgumentError, parse_args, validate_args  # noqa: E402
from mindspeed_ms.training import save_lock  # noqa: E402
from mindspeed_ms.training.save_dir import estimated_checkpoint_bytes, prepare_save_dir  # noqa: E402

HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from mindspeed_ms.training import save_lock
    save_lock.acquire({save!r})
    print("locked", flush=True)
    time.sleep(120)
""")


@pytest.fixture
def holder(tmp_path):
    save = str(tmp_path / "save")
    proc = subprocess.Popen([sys.executable, "-c", HOLDER.format(root=ROOT, save=save)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield save, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def startup_for(tmp_path, flags):
    args = parse_args(f"--mm-model {small_model_json(str(tmp_path / 'model.json'))} --seq-length 64 "
                      f"--train-iters 2 --lr 1e-3 {flags}".split())
    return args, validate_args(args, 1, "CPU", require_data=False)


def test_second_run_refused_naming_lock_and_process(tmp_path, holder, capsys):
    save, proc = holder
    with pytest.raises(save_lock.SaveLockError) as e:
        save_lock.acquire(save)
    msg = str(e.value)
    assert f"pid {proc.pid}" in msg and save_lock.lock_path(save) in msg and "another training run" in msg
    # the training entry point refuses before building anything: one line, exit 2
    from mindspeed_ms.training.pretrain import main
    data = tmp_path / "data.json"
    data.write_text("{}")
    mj = small_model_json(str(tmp_path / "model.json"))
    rc = main(f"--mm-data {data} --mm-model {mj} --seq-length 64 --train-iters 2 --lr 1e-3 --save {save}".split())
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: --save") and f"pid {proc.pid}" in err and "\n" not in err, err


def test_stale_lock_of_killed_run_taken_over(holder):
    save, proc = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.load(open(save_lock.lock_path(save)))["pid"] == proc.pid   # left behind by kill -9
    try:
        save_lock.acquire(save)
        assert json.load(open(save_lock.lock_path(save)))["pid"] == os.getpid()
        assert not save_lock.held_by_other(save)
    finally:
        save_lock.release(save)
    assert not os.path.exists(save_lock.lock_path(save))     # released: the file is removed


def test_dead_pid_without_flock_taken_over_other_host_refused(tmp_path):
    save = tmp_path / "save"
    save.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket
    lock = save_lock.lock_path(str(save))
    with open(lock, "w") as f:
        json.dump({"pid": dead.pid, "host": socket.gethostname(), "started": time.time()}, f)
    save_lock.acquire(str(save))
    save_lock.release(str(save))
    with open(lock, "w") as f:
        json.dump({"pid": 12345, "host": "other-node-7", "started": time.time()}, f)
    with pytest.raises(save_lock.SaveLockError, match=r"other-node-7.*delete .*\.mindspeed-ms\.lock"):
        save_lock.acquire(str(save))


def test_save_keeps_temporary_dirs_of_the_lock_holder(holder):
    """Leftover removal at save time never touches a live run's save in progress."""
    from mindspeed_ms.training.checkpointing import save_checkpoint
    save, proc = holder
    theirs = os.path.join(save, ".tmp-iter_0000003-abcdef12")
    os.makedirs(os.path.join(theirs, "mp_rank_00"))
    model = {"text_decoder.decoder.final_layernorm.weight": np.ones(4, np.float32)}
    save_checkpoint(save, 1, model, "torch")       # a library call that bypasses the lock
    assert os.path.isdir(theirs)
    proc.kill()
    proc.wait()
    save_checkpoint(save, 2, model, "torch")       # holder gone: its leftover is garbage now
    assert not os.path.exists(theirs)


def test_save_is_a_file_or_unwritable(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    args, st = startup_for(tmp_path, f"--save {f}")
    with pytest.raises(ArgumentError, match=r"--save .*file.* is a file"):
        prepare_save_dir(args, st, 0)
    assert f.read_text() == "x"
    args, st = startup_for(tmp_path, f"--save {f}/below")
    with pytest.raises(ArgumentError, match=r"--save .* not writable"):
        prepare_save_dir(args, st, 0)
    if os.geteuid() != 0:          # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            args, st = startup_for(tmp_path, f"--save {ro}/ckpt")
            with pytest.raises(ArgumentError, match="not writable"):
                prepare_save_dir(args, st, 0)
        finally:
            ro.chmod(0o700)


def test_free_space_against_one_checkpoint(tmp_path, monkeypatch):
    from mindspeed_ms.config.param_shapes import param_count
    args, st = startup_for(tmp_path, f"--save {tmp_path}/save")
    need = estimated_checkpoint_bytes(args, st.model)
    assert need == param_count(st.model) * 4 * 3
    args2, _ = startup_for(tmp_path, f"--save {tmp_path}/save --no-save-optim")
    assert estimated_checkpoint_bytes(args2, st.model) == need // 3
    # the estimate is not below what a save writes (the model part alone is a third of it)
    from mindspeed_ms.config.param_shapes import mm_param_shapes
    from mindspeed_ms.training.checkpointing import save_checkpoint
    model = {n: np.zeros(s, np.float32) for n, s in mm_param_shapes(st.model).items()}
    d = save_checkpoint(str(tmp_path / "probe"), 1, model, "torch")
    written = sum(os.path.getsize(os.path.join(dp, n)) for dp, _, fs in os.walk(d) for n in fs)
    assert need // 3 <= written * 1.05 and written <= need
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10 ** 12, 10 ** 12 - need + 1, need - 1))
    with pytest.raises(ArgumentError, match=r"--save .*free on its filesystem, one checkpoint needs about"):
        prepare_save_dir(args, st, 0)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10 ** 12, 0, need))
    prepare_save_dir(args, st, 0)
    save_lock.release(args.save)


def test_msrun_scheduler_does_not_take_the_lock(tmp_path, monkeypatch):
    """msrun's scheduler runs the script with rank 0 too; worker 0 of the same job must get the lock."""
    args, st = startup_for(tmp_path, f"--save {tmp_path}/save")
    monkeypatch.setenv("MS_ROLE", "MS_SCHED")
    prepare_save_dir(args, st, 0)
    assert not os.path.exists(save_lock.lock_path(args.save))
