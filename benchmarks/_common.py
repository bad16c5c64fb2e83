"""Shared by the benchmark scripts: a description of the machine they ran on, and the JSON result file."""

from __future__ import annotations

import os
import platform


def machine_info(device: str = "cpu") -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                info["mem_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def write_result(out, benchmark: str, note: str, results, device: str = "cpu", **extra) -> None:
    """Write one benchmark's JSON result (what ran, where, when) to ``out``; nothing when out is falsy."""
    import json
    import sys
    import time
    from pathlib import Path

    if not out:
        return
    doc = {"benchmark": benchmark, "note": note, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "machine": machine_info(device),
           **extra, "results": results}
    Path(out).write_text(json.dumps(doc, indent=1, default=str))
