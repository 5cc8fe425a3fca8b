"""Shared helpers of the benchmark scripts: machine and GPU description, result JSON writing.

Every script in ``benchmarks/`` stores :func:`machine_info` (and, where a GPU matters,
:func:`gpu_info`) beside its numbers so that figures from different machines stay comparable,
and writes its result with :func:`save_json` (temporary file + rename: never half a file).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import socket
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# distributions whose versions a result records (missing ones are reported as None)
VERSIONS = ("synful", "numpy", "scipy", "tensorflow", "keras", "daisy", "gunpowder", "zarr",
            "funlib.persistence", "funlib.geometry", "tensorstore", "pymongo", "submitit", "nvidia-ml-py")


def cpu_name() -> str:
    """CPU model from /proc/cpuinfo ('model name'), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}"


def _memory_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def versions(names=VERSIONS) -> dict:
    """{distribution: version or None}, from the installed metadata (nothing is imported)."""
    out = {}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = None
    return out


def machine_info() -> dict:
    """Host, OS, CPU model and cores, memory, Python and library versions, load and time (UTC).

    ``cpus_usable`` is the CPU affinity of this process (what a container or Slurm grants);
    ``load_average`` (1, 5, 15 min) tells whether other work shared the machine during a run.
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"host": socket.gethostname(), "os": _os_name(), "platform": platform.platform(),
            "cpu": cpu_name(), "cpu_count": os.cpu_count(), "cpus_usable": usable,
            "memory_bytes": _memory_bytes(), "python": platform.python_version(),
            "versions": versions(), "load_average": [round(v, 2) for v in os.getloadavg()],
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def gpu_info() -> dict | str:
    """The GPUs NVML sees: ``{"driver", "cuda_driver", "devices": [{"index", "name", "memory_bytes"}]}``.

    All physical GPUs are listed, whatever ``CUDA_VISIBLE_DEVICES`` says; ``"none"`` when NVML
    cannot start (no driver, no GPU, no pynvml).
    """
    try:
        from synful.cluster import _import_nvml

        nvml = _import_nvml()
        nvml.nvmlInit()
    except Exception:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return "none"
    try:
        info = {"driver": _text(nvml.nvmlSystemGetDriverVersion()), "devices": []}
        try:
            cuda = int(nvml.nvmlSystemGetCudaDriverVersion())
            info["cuda_driver"] = f"{cuda // 1000}.{cuda % 1000 // 10}"
        except Exception:  # older drivers lack the call
            info["cuda_driver"] = None
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            info["devices"].append({"index": i, "name": _text(nvml.nvmlDeviceGetName(h)),
                                    "memory_bytes": int(nvml.nvmlDeviceGetMemoryInfo(h).total)})
        return info
    finally:
        nvml.nvmlShutdown()


def gpu_names() -> list[str]:
    """Names of the GPUs NVML sees (empty without NVML)."""
    info = gpu_info()
    return [] if info == "none" else [d["name"] for d in info["devices"]]


def default_out(name: str) -> Path:
    """``benchmarks/results/<name>_<host>.json``: results of different machines side by side."""
    return RESULTS / f"{name}_{socket.gethostname()}.json"


def save_json(path, data, indent: int = 1) -> Path:
    """Write ``data`` as JSON to ``path`` (parents created) via a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=indent, default=str) + "\n")
    os.replace(tmp, path)
    return path


def save_report(out, name: str, data, indent: int = 1) -> Path:
    """Save a benchmark's JSON to ``out`` (its ``--out``; None: :func:`default_out` of ``name``), print the path."""
    path = save_json(out or default_out(name), data, indent=indent)
    print(f"saved {path}")
    return path
