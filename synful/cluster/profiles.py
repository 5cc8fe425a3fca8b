"""Cluster profiles: site defaults for [Worker] keys (YAML in ``configs/clusters/``)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config import Worker
from .errors import ClusterError, check_section

PROFILE_DIR = Path(__file__).resolve().parent.parent.parent / "configs" / "clusters"
_PROFILE_KEYS = ("description", "defaults", "setup", "container_runtime")


@dataclass(frozen=True)
class Profile:
    """A cluster profile: site defaults for [Worker] keys, job-script setup lines, container runtime."""

    name: str
    path: Path
    description: str = ""
    defaults: dict = dataclasses.field(default_factory=dict)
    setup: tuple[str, ...] = ()
    container_runtime: str = "singularity"


def _profile_path(name: str) -> Path:
    if "/" in name or name.endswith((".yaml", ".yml")):
        return Path(os.path.expanduser(name))
    return PROFILE_DIR / f"{name}.yaml"


def _read_yaml(name: str) -> tuple[Path, dict]:
    """The profile's path and its YAML mapping, with only the known top-level keys."""
    import yaml

    path = _profile_path(name)
    if not path.is_file():
        known = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
        raise ClusterError(f"[Worker] cluster_profile: no profile '{name}' ({path} not found; "
                           f"known: {', '.join(known) or 'none'})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ClusterError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ClusterError(f"{path}: expected a mapping with 'defaults', 'setup', 'container_runtime'")
    unknown = sorted(set(data) - set(_PROFILE_KEYS))
    if unknown:
        raise ClusterError(f"{path}: unknown key '{unknown[0]}' (known: {', '.join(_PROFILE_KEYS)})")
    return path, data


def load_profile(name: str) -> Profile:
    """Read and validate cluster profile ``name`` (a name in configs/clusters/ or a YAML path)."""
    path, data = _read_yaml(name)
    defaults = data.get("defaults") or {}
    hints = {f.name: f.type for f in dataclasses.fields(Worker)}
    for k, v in defaults.items():
        if k not in hints or k == "cluster_profile":
            raise ClusterError(f"{path} defaults: unknown [Worker] key '{k}'")
        _check_profile_value(path, k, hints[k], v)
    # a profile's strings reach job scripts exactly like a worker_config.ini's
    check_section(dataclasses.replace(Worker(), **defaults), f"{path} defaults:")
    setup = data.get("setup") or []
    if not isinstance(setup, list) or not all(isinstance(s, str) for s in setup):
        raise ClusterError(f"{path} setup: expected a list of shell lines")
    runtime = data.get("container_runtime") or "singularity"
    if runtime not in ("singularity", "apptainer"):
        raise ClusterError(f"{path} container_runtime: expected singularity or apptainer, got '{runtime}'")
    if defaults.get("singularity_container"):
        defaults = dict(defaults)
        defaults["singularity_container"] = str((path.parent / os.path.expanduser(
            defaults["singularity_container"])).resolve())
    return Profile(name=name, path=path, description=str(data.get("description") or ""),
                   defaults=dict(defaults), setup=tuple(setup), container_runtime=runtime)


def _check_profile_value(path, k, hint, v):
    hint = str(hint)
    if v is None and "Optional" in hint:
        return
    if "list" in hint:
        ok = isinstance(v, list) and all(isinstance(x, str) for x in v)
        want = "a list of strings"
    elif "int" in hint:
        ok = isinstance(v, int) and not isinstance(v, bool) and v >= 0
        want = "a non-negative integer"
    else:
        ok = isinstance(v, str)
        want = "a string" + (' (quote times, e.g. "24:00:00")' if isinstance(v, int) else "")
    if not ok:
        raise ClusterError(f"{path} defaults: {k}: expected {want}, got {v!r}")
    if k == "executor" and v not in ("local", "slurm"):
        raise ClusterError(f"{path} defaults: executor: expected local or slurm, got {v!r}")


def resolve_worker(worker_cfg: Worker) -> tuple[Worker, Optional[Profile]]:
    """Apply the worker's cluster profile: keys still at their built-in default take the profile's value."""
    if not worker_cfg.cluster_profile:
        return worker_cfg, None
    profile = load_profile(worker_cfg.cluster_profile)
    builtin = Worker()
    changes = {}
    for k, v in profile.defaults.items():
        if getattr(worker_cfg, k) == getattr(builtin, k):
            changes[k] = v
    return dataclasses.replace(worker_cfg, **changes), profile
