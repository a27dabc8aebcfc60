"""The figures of Megatron's memory line (`[Rank N] (after K iterations) memory (MB) | allocated:
... | max allocated: ... | reserved: ... | max reserved: ...`), from the best source the backend has.

Ascend: MindSpore's device memory statistics (`mindspore.runtime.memory_allocated` and friends, the
counterparts of torch.cuda's). CPU: MindSpore 2.10 reports 0 for all four on its CPU pool (measured),
so the line carries the process's memory: allocated = resident set now (VmRSS), max allocated = peak
resident set (VmHWM), and the same two for reserved / max reserved (the CPU pool is part of the
resident set; no smaller figure exists). A later MindSpore that reports its CPU pool is used as is.
"""
from __future__ import annotations

import resource
import sys
from typing import Dict

MB = 1024.0 * 1024.0


def _proc_status_kb(field: str):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def process_memory_mb() -> Dict[str, float]:
    """Resident set now and its peak, in MB (Linux /proc; elsewhere the peak from getrusage)."""
    peak_kb = _proc_status_kb("VmHWM")
    if peak_kb is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_kb = peak / 1024 if sys.platform == "darwin" else peak     # bytes on macOS, KiB on Linux
    rss_kb = _proc_status_kb("VmRSS")
    if rss_kb is None:
        rss_kb = peak_kb
    return {"rss": rss_kb / 1024.0, "peak_rss": peak_kb / 1024.0}


def memory_stats(backend: str) -> Dict[str, float]:
    """{"allocated", "max_allocated", "reserved", "max_reserved", "source"} in MB."""
    import mindspore as ms
    rt = ms.runtime
    try:
        pool = {"allocated": rt.memory_allocated() / MB, "max_allocated": rt.max_memory_allocated() / MB,
                "reserved": rt.memory_reserved() / MB, "max_reserved": rt.max_memory_reserved() / MB}
    except (RuntimeError, AttributeError):
        pool = None
    if pool is not None and (backend == "Ascend" or pool["max_allocated"] > 0):
        pool["source"] = "device"
        return pool
    proc = process_memory_mb()
    return {"allocated": proc["rss"], "max_allocated": proc["peak_rss"], "reserved": proc["rss"],
            "max_reserved": proc["peak_rss"], "source": "process"}

