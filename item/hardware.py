"""What this machine's processor computes natively, and how many threads the models get.

Shared by the featurize models (``--precision auto``, the thread count) and the heads (bfloat16 training):
one answer to "does this CPU compute bfloat16?" for every stage. torch and the cpuinfo reader are imported
inside the functions.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

#: The /proc/cpuinfo flags that mean bfloat16 products in hardware: x86 AVX512-BF16 and AMX-BF16, ARM's BF16.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_flags() -> set[str]:
    """The feature flags /proc/cpuinfo lists (x86 ``flags``, ARM ``Features``); empty where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[-1].split())
    return flags


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 matrix products natively (x86 AVX512-BF16 or AMX; ARM BF16).

    torch says so: on x86 ``torch.cpu._is_avx512_bf16_supported()`` / ``_is_amx_tile_supported()`` (cpuinfo's
    reading of the instruction sets); on ARM ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` (there it reads
    the BF16 extension). On x86 the mkldnn query is not this question: it is also true on AVX512 CPUs without
    bfloat16 instructions, where oneDNN emulates them and bfloat16 runs slower than float32. Where torch
    cannot answer (another architecture, an older torch), the /proc/cpuinfo flags decide."""
    try:
        import torch

        machine = platform.machine().lower()
        if machine in ("x86_64", "amd64", "x86", "i686"):
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        if machine in ("aarch64", "arm64"):
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        pass
    return bool(cpu_flags() & BF16_FLAGS)


def cgroup_cores(root: str | os.PathLike = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's control group in cores (cgroup v2 ``cpu.max``, v1
    ``cpu/cpu.cfs_quota_us`` over ``cpu.cfs_period_us``), or None where there is no quota. A container
    limited to 2 cores of a 64-core host sees 64 CPUs and would run 64 threads in time slices of 2."""
    root = Path(root)
    try:
        if (root / "cpu.max").is_file():
            quota, _, period = (root / "cpu.max").read_text().strip().partition(" ")
            if quota == "max":
                return None
            return int(quota) / int(period or 100000)
        v1 = root / "cpu"
        if (v1 / "cpu.cfs_quota_us").is_file():
            quota = int((v1 / "cpu.cfs_quota_us").read_text())
            period = int((v1 / "cpu.cfs_period_us").read_text())
            return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None
    return None


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (else os.cpu_count()), capped by its control group's
    CPU quota rounded up."""
    import math

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = cgroup_cores()
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def limit_model_threads() -> int:
    """Cap torch's intra-op pool at the usable cores (never raise it) and return the count in effect.

    torch sizes its pool from the CPUs it sees; in a container with a CPU quota, or a process pinned to
    fewer cores, that is more threads than cores, and they wait on each other inside every product. Decode
    workers (DataLoader processes) run one torch thread each (the DataLoader sets it), so they are not
    counted here; whether a run gains by leaving them a core is a measurement
    (benchmarks/cpu_precision.py, lever ``threads``)."""
    import torch

    cores = usable_cores()
    if torch.get_num_threads() > cores:
        torch.set_num_threads(cores)
    return torch.get_num_threads()
