"""Which hardware runs the job, the msrun rank/world, and the DP collective used by the loop."""
from __future__ import annotations

import os
from typing import Tuple


def detect_backend() -> str:
    """"Ascend" when MindSpore can use an Ascend device (CANN installed), else "CPU".

    MS_DEVICE_TARGET (a MindSpore variable) overrides the detection, e.g. to force CPU on an
    Ascend host."""
    forced = os.environ.get("MS_DEVICE_TARGET")
    if forced:
        return "Ascend" if forced.lower() == "ascend" else forced.upper()
    if not (os.environ.get("ASCEND_HOME_PATH") or os.path.isdir("/usr/local/Ascend")):
        return "CPU"           # no CANN toolkit: skip MindSpore's (noisy) Ascend probe
    try:
        import mindspore as ms
        if ms.hal.is_available("Ascend"):
            return "Ascend"
    except Exception:     # a CPU-only wheel raises or logs when probing the Ascend plugin
        pass
    return "CPU"


def dist_env() -> Tuple[int, int]:
    """(rank, world size) from the variables msrun exports to each worker (1 process: (0, 1)).

    Under msrun this also ties the worker's life to the launcher's (`launcher_guard`): every entry
    point asks for its rank first, so no worker outlives a killed msrun."""
    from mindspeed_ms.training.launcher_guard import follow_launcher
    follow_launcher()
    if os.environ.get("MS_ROLE") == "MS_WORKER":
        return int(os.environ.get("MS_NODE_ID", os.environ.get("RANK_ID", "0"))), int(os.environ["MS_WORKER_NUM"])
    return int(os.environ.get("RANK_ID", "0")), int(os.environ.get("RANK_SIZE", "1"))
