"""--save checked before any compute: a writable directory, room for one checkpoint, and the lock.

Without this the first problem shows at the first save, after training: a traceback for an
unwritable path or a file, and a raw OSError for a full disk, losing the work since the last
checkpoint. A save writes the new iteration beside the old ones (temporary directory, then rename),
so the free space needed is the size of one checkpoint, estimated from model.json: parameters x 4
bytes (fp32, the widest dtype saved), x 3 with the AdamW moments (--no-save-optim: x 1).
"""
from __future__ import annotations

import os
import shutil
import tempfile

from mindspeed_ms.arguments import ArgumentError
from mindspeed_ms.training import save_lock

BYTES_PER_VALUE = 4


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 27 else f"{n / 2 ** 20:.1f} MiB"


def estimated_checkpoint_bytes(args, model_cfg) -> int:
    """Upper estimate of one checkpoint of this run (LoRA: the adapters only, a small fraction)."""
    from mindspeed_ms.config.param_shapes import param_count
    n = param_count(model_cfg)
    if getattr(args, "lora_target_modules", None):
        return 0   # adapters only: far below any disk that held the base model
    per_value = BYTES_PER_VALUE * (1 if args.no_save_optim else 3)
    return int(n * per_value)


def check_writable(save: str):
    """`save` is (or can be made) a directory this process can create files in."""
    if os.path.exists(save) and not os.path.isdir(save):
        raise ArgumentError(f"--save {save} is a file, not a directory: give a directory for the checkpoints")
    try:
        os.makedirs(save, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=save)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ArgumentError(f"--save {save} is not writable ({e.strerror or e}): choose a directory you can "
                            f"write to, or fix its permissions") from None


def check_free_space(save: str, need: int, n_params: int, optim: bool):
    if need <= 0:
        return
    free = shutil.disk_usage(save).free
    if free < need:
        how = "parameters x 4 bytes x 3 (weights + AdamW moments)" if optim else "parameters x 4 bytes"
        raise ArgumentError(f"--save {save}: only {_gib(free)} free on its filesystem, one checkpoint needs about "
                            f"{_gib(need)} ({n_params:,} {how}); free some space, choose another --save"
                            + (", or add --no-save-optim" if optim else ""))


def prepare_save_dir(args, startup, rank: int):
    """Run before compute on every entry point that trains. Rank 0 (the writer of DP runs and the
    committer of sharded ones) takes the lock; every rank checks the directory it may write to."""
    if not args.save:
        return
    check_writable(args.save)
    from mindspeed_ms.config.param_shapes import param_count
    check_free_space(args.save, estimated_checkpoint_bytes(args, startup.model), param_count(startup.model),
                     not args.no_save_optim)
    # msrun's scheduler process runs the script too (its init() only coordinates): it must not hold
    # the lock, or worker 0 of the same job would find --save in use
    if rank == 0 and os.environ.get("MS_ROLE") != "MS_SCHED":
        try:
            save_lock.acquire(args.save)
        except save_lock.SaveLockError as e:
            raise ArgumentError(str(e)) from None
