"""Megatron's W&B flags: `--wandb-project`, `--wandb-exp-name`, `--wandb-save-dir`.

As in Megatron, the last rank (the logging rank) opens one run named by --wandb-exp-name in
--wandb-project, its files under --wandb-save-dir (default `<--save>/wandb`), and logs the
scalars TensorBoard gets. Without a network the run is kept offline in that directory (said in
one line; `wandb sync` uploads it later); without the `wandb` package nothing is sent and one
line says so. wandb's own banners are silenced (WANDB_SILENT) unless the user set it.
"""
from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


def wandb_problem(args):
    """The one-line error for W&B flags that cannot work (None when they are fine or unused)."""
    if not args.wandb_project:
        return None
    if not args.wandb_exp_name:
        return (f"--wandb-project {args.wandb_project} needs --wandb-exp-name (the run's name), as in Megatron; "
                f"add --wandb-exp-name NAME")
    if not (args.wandb_save_dir or args.save):
        return ("--wandb-project needs a directory for the run's files: give --wandb-save-dir DIR "
                "(or --save, whose wandb/ subdirectory is the default)")
    return None


def _reachable(timeout: float = 3.0) -> bool:
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def attach_wandb(logger, args):
    """Open the run on the logging rank and hand it to `logger` (which logs every scalar to it)."""
    if not args.wandb_project or not logger.active:
        return None
    try:
        import wandb
    except ImportError:
        logger.notice(f"--wandb-project {args.wandb_project}: the wandb package is not installed, so nothing "
                      f"is sent to W&B (pip install wandb); the log and TensorBoard are unaffected")
        return None
    save_dir = args.wandb_save_dir or os.path.join(args.save, "wandb")
    os.makedirs(save_dir, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    if "WANDB_MODE" not in os.environ and not _reachable():
        os.environ["WANDB_MODE"] = "offline"
        logger.notice(f"wandb: no network, run '{args.wandb_exp_name}' is logged offline under {save_dir} "
                      f"(upload it later with: wandb sync {save_dir}/wandb/offline-run-*)")
    config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, list, type(None)))}
    run = wandb.init(dir=save_dir, name=args.wandb_exp_name, project=args.wandb_project, config=config)
    logger.wandb = run
    return run
