"""Shared helpers of the benchmark scripts: machine and GPU description, result JSON writing.

Every script in ``benchmarks/`` stores :func:`machine_info` (and, where a GPU matters,
:func:`gpu_info`) beside its numbers so that figures from different machines stay comparable,
and writes its result with :func:`save_json` (temporary file + rename: never half a file), which
stamps it with :func:`provenance`: the git commit the figures were measured at, whether synful/ or
benchmarks/ had uncommitted changes, and the date.  Each script also stores its headline figures as
a top-level ``summary`` list (:func:`summarize`: rows ``{stage, measure, value, unit[, remark]}``),
from which ``benchmarks/readme_table.py`` generates the README's performance table.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ROOT = HERE.parent

# paths whose uncommitted changes make a result "dirty" (the results themselves do not count)
PROVENANCE_PATHS = ("synful", "benchmarks", ":(exclude)benchmarks/results")

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


def _git(*args) -> str | None:
    try:
        p = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def provenance() -> dict:
    """``{"commit", "dirty", "date"}``: the short sha of HEAD (None outside a git checkout), whether
    ``synful/`` or ``benchmarks/`` (not ``benchmarks/results/``) differ from it, untracked files
    included (None when unknown), and the UTC date and time in ISO 8601."""
    commit = _git("rev-parse", "--short=7", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=normal", "--", *PROVENANCE_PATHS) if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def machine_info() -> dict:
    """Host, OS, CPU model and cores, memory, Python and library versions, load and time (UTC).

    ``cpus_usable`` is the CPU affinity of this process (what a container or Slurm grants);
    ``load_average`` (1, 5, 15 min) tells whether other work shared the machine during a run;
    ``gpus`` names the GPUs NVML sees (empty without one).
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"host": socket.gethostname(), "os": _os_name(), "platform": platform.platform(),
            "cpu": cpu_name(), "cpu_count": os.cpu_count(), "cpus_usable": usable,
            "memory_bytes": _memory_bytes(), "python": platform.python_version(),
            "gpus": gpu_names(), "versions": versions(), "load_average": [round(v, 2) for v in os.getloadavg()],
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
    """``benchmarks/results/bench_<name>.json``: the canonical result, the one the README table shows
    (measure another machine with ``--out`` elsewhere)."""
    return RESULTS / f"bench_{name}.json"


def save_json(path, data, indent: int = 1) -> Path:
    """Write ``data`` as JSON to ``path`` (parents created) via a temporary file and a rename.

    A dict gets :func:`provenance` (``commit``, ``dirty``, ``date``) as its first keys, unless it
    carries them already (a result copied unchanged keeps its own)."""
    path = Path(path)
    if isinstance(data, dict) and "commit" not in data:
        data = {**provenance(), **data}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=indent, default=str) + "\n")
    os.replace(tmp, path)
    return path


def save_report(out, name: str, data, indent: int = 1, stage: str | None = None) -> Path:
    """Save a benchmark's JSON to ``out`` (its ``--out``; None: :func:`default_out` of ``name``), print the path.

    With ``stage``, the result gets its ``summary`` rows (:func:`summarize`) first."""
    if stage is not None:
        data = {**data, "summary": summarize(stage, data)}
    path = save_json(out or default_out(name), data, indent=indent)
    print(f"saved {path}")
    return path


# ---------------------------------------------------------------------------------------------
# headline figures: the ``summary`` rows each result JSON carries (the README table is made of them)

BRAIN_VOXELS = 50e12  # FAFB, the whole adult Drosophila brain at 40 x 4 x 4 nm

QUICK_REMARK = "--quick run: checks the set-up, not the machine's speed"
XLA_CPU_REMARK = "slow: XLA-compiled step on CPU; leave xla off on CPU (see the float32 step without XLA)"
EMULATOR_REMARK = "emulator, not a real mongod: nx-27017 (MongoDB wire protocol on SQLite)"


def _row(stage: str, measure: str, value, unit: str, remark: str | None = None) -> dict:
    row = {"stage": stage, "measure": measure, "value": value, "unit": unit}
    if remark:
        row["remark"] = remark
    return row


def _on_cpu(device: str) -> bool:
    return "GPU" not in device.upper()


def summarize(stage: str, r: dict) -> list[dict]:
    """Headline figures of one stage's result JSON, as table rows ``{stage, measure, value, unit[, remark]}``.

    ``stage`` is the kind of result: generation, training, prediction, extraction, store, evaluation,
    scheduling, cluster, transmitters, embed or learnability.  A ``--quick`` result's rows say so in ``remark``."""
    rows = []
    if stage == "generation":
        for g in r["generate"]:
            rows.append(_row(stage, f"generate {'x'.join(map(str, g['shape']))}", g["mvoxels_per_s"], "Mvoxel/s"))
        for x in r.get("io", []):
            rows.append(_row(stage, f"read 64x512x512, {x['case']}", x["whole_mvoxels_per_s"], "Mvoxel/s"))
    elif stage == "training":
        xla = bool(r.get("xla"))
        for mode, s in r["step"].items():
            slow = XLA_CPU_REMARK if xla and _on_cpu(r["device"]) else None
            rows.append(_row(stage, f"step {mode}{', XLA' if xla else ''}, preset {r['preset']} "
                             f"({r['parameters']:,} parameters) on {r['device']}", s["iterations_per_s"],
                             "iterations/s", slow))
        if "pipeline" in r:
            rows.append(_row(stage, "gunpowder pipeline, one process", r["pipeline"]["batches_per_s"], "batches/s"))
    elif stage == "prediction":
        for mode, m in r["modes"].items():
            rows.append(_row(stage, f"{mode} end to end on {m['device']}", m["end_to_end"]["voxels_per_second"],
                             "voxels/s"))
            rows.append(_row(stage, f"{mode} steady on {m['device']}", m["steady"]["voxels_per_second"], "voxels/s"))
        if r["modes"]:
            mode, m = max(r["modes"].items(), key=lambda kv: kv[1]["steady"]["voxels_per_second"])
            days = round(BRAIN_VOXELS / m["steady"]["voxels_per_second"] / 86400, 1)
            rows.append(_row(stage, f"50 Tvoxel brain at the {mode} steady rate on {m['device']}", days,
                             "device-days", "slow: CPU only, one device" if _on_cpu(mode) else None))
    elif stage == "extraction":  # bench_extract.py writes its own rows; this reads its results before 2026-11-26
        for x in r["results"]:
            rows.append(_row(stage, x["implementation"], x["mvoxels_per_s"], "Mvoxel/s"))
        rows.append(_row(stage, "speedup over the per-region baseline", r["speedup"], "x"))
    elif stage == "store":
        for backend, x in r["results"].items():
            label = f"{backend}, {x['server']}" if "server" in x else backend
            remark = EMULATOR_REMARK if "nx-27017" in x.get("server", "") else None
            rows.append(_row(stage, f"{label} inserts", x["inserts_per_s"], "partners/s", remark))
            rows.append(_row(stage, f"{label} rewrites", x["rewrites_per_s"], "partners/s", remark))
    elif stage == "evaluation":
        i = r["inputs"]
        rows.append(_row(stage, f"{i['predictions']} predictions vs {i['ground_truth']} links, {i['neurons']} neurons, "
                         f"{i['score_thresholds']}-threshold sweep", r["seconds"]["evaluate_sweep_per_neuron"], "s"))
        rows.append(_row(stage, "read FAFB JSON", r["seconds"]["load_json"], "s"))
    elif stage == "scheduling":
        for mode, x in r["modes"].items():
            if mode == "million":
                rows.append(_row(stage, f"{x['blocks']:,} blocks, {x['skipped']:,} masked out, 2 workers",
                                 x["blocks_per_s"], "blocks/s"))
                rows.append(_row(stage, f"scheduler peak memory, {x['blocks']:,} blocks",
                                 round(x["scheduler_peak_rss_bytes"] / 2**20, 1), "MiB"))
                continue
            rows.append(_row(stage, f"{mode}, {x['blocks']} blocks", x["blocks_per_s"], "blocks/s"))
    elif stage == "cluster":
        for mode, x in r["seconds"].items():
            remark = "local single-node Slurm (tests/slurm/start_local_slurm.sh)" if mode.startswith("slurm") else None
            rows.append(_row(stage, f"{mode} launch to exit code", x["median_s"], "s", remark))
    elif stage == "transmitters":
        rows.append(_row(stage, f"VGG3D training, batch {r['batch_size']}", r["seconds_per_iteration"],
                         "s/iteration"))
        rows.append(_row(stage, "prediction", r["predict_synapses_per_second"], "synapses/s"))
    elif stage == "embed":
        cube = "x".join(map(str, r["input_shape"]))
        rows.append(_row(stage, f"embedding inference, {cube} cubes, batch {r['batch_size']}", r["synapses_per_second"],
                         "synapses/s"))
        rows.append(_row(stage, "embedding network alone", r["network_synapses_per_second"], "synapses/s"))
    elif stage == "learnability":
        shape = "x".join(map(str, r["shape"]))
        rows.append(_row(stage, f"{r['params']:,}-parameter U-Net on {shape}, training",
                         round(r["iterations"] / r["train_seconds"], 3), "iterations/s"))
        rows.append(_row(stage, f"post-site detection after {r['iterations']} iterations, recall", r["recall"], ""))
        rows.append(_row(stage, f"post-site detection after {r['iterations']} iterations, precision",
                         r["precision"], ""))
    else:
        raise ValueError(f"unknown stage {stage!r}")
    if r.get("quick"):
        for row in rows:
            row["remark"] = QUICK_REMARK
    return rows
