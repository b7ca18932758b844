"""What a measurement ran on: CPU model and the instruction sets that change speed and numerics.

Speed-ups and even parity differ between this project's machines (AMD EPYC without AVX-512,
Intel Xeon with AMX, AVX512-VNNI and avx512_fp16: OpenVINO computes bf16 by default where the
CPU has it), so every benchmark and ``bench`` report records where it ran.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

# CPU flags (as /proc/cpuinfo names them) that select different kernels in onnxruntime, OpenVINO and torch.
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                  "amx_bf16", "amx_int8")
LIBRARIES = ("numpy", "onnxruntime", "openvino", "torch", "transformers", "coremltools", "tensorrt", "nncf",
             "onnxscript", "onnxslim")


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """CPU model, relevant flags, core counts, OS, Python, and the versions of installed libraries.

    Args:
        threads: The thread count the measurement asked its runtimes for (None: their default).
    """
    model, flags = _cpu()
    versions = {}
    for name in LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return {"cpu": model, "cpu_flags": [f for f in RELEVANT_FLAGS if f in flags],
            "amx": "amx_bf16" in flags, "logical_cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "threads": threads, "os": f"{platform.system()} {platform.release()}", "machine": platform.machine(),
            "python": sys.version.split()[0], "libraries": versions}


def describe_machine(info: dict[str, Any]) -> str:
    """One line: ``AMD EPYC, 2 CPUs, flags avx2 fma``."""
    flags = " ".join(info["cpu_flags"]) or "none of " + ", ".join(RELEVANT_FLAGS[:3])
    return f"{info['cpu']}, {info['usable_cpus']} CPUs, flags {flags}"


def _cpu() -> tuple[str, set[str]]:
    """Model name and flag set: /proc/cpuinfo on Linux, sysctl on macOS, platform elsewhere."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        fields = dict(line.split(":", 1) for line in cpuinfo.read_text().splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        return fields.get("model name", platform.processor() or "unknown"), set(fields.get("flags", "").split())
    if sys.platform == "darwin":
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            name = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=5).stdout.strip()
            return name or platform.machine(), set()
    return platform.processor() or platform.machine(), set()
