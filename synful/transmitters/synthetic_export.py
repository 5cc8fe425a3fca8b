"""Synister-style synapse, skeleton and hemilineage records from a synthetic volume.

:mod:`synful.synthetic` gives every T-bar (presynaptic site) one transmitter
class and renders its vesicles, PSD and cleft accordingly.  Here each T-bar
becomes one synapse record at its presynaptic location (``prepost = "pre"``).
A real skeleton releases one transmitter, but a synthetic neuron may hold
T-bars of several classes, so a *skeleton* is a (neuron, transmitter) pair:
its id is unique, its ``nt_known`` is that one class.  Skeletons are grouped
into ``hemilineages_per_class`` hemilineages per class (by neuron id), so
skeleton and hemilineage splits have groups to keep apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import SynfulError
from ..io.files import write_json

__all__ = ["SYNTHETIC_SHAPE", "SYNTHETIC_VOXEL_SIZE", "SYNTHETIC_DENSITY", "synapse_records",
           "write_synthetic_dataset"]


def synapse_records(partners: np.ndarray, transmitters, *, hemilineages_per_class: int = 2
                    ) -> tuple[list[dict], list[dict], list[dict]]:
    """``(synapses, skeletons, hemilineages)`` records from synthetic partners and their T-bar classes.

    ``partners`` is PARTNER_DTYPE (as :func:`synful.io.cremi.read_annotations`
    returns; partners of one T-bar share pre location and ``pre_seg_id``),
    ``transmitters`` the class name per partner row.  Synapse ids count T-bars
    from 0 in partner order; locations are the pre sites, nm.
    """
    from ..synthetic import TRANSMITTERS

    tbars: dict[tuple, str] = {}
    for p, nt in zip(partners, transmitters):
        key = (int(p["pre_z"]), int(p["pre_y"]), int(p["pre_x"]), int(p["pre_seg_id"]))
        if tbars.setdefault(key, str(nt)) != str(nt):
            raise SynfulError(f"synthetic T-bar at {key[:3]} nm has two transmitters: {tbars[key]} and {nt}")
    synapses, skel_ids = [], {}
    for sid, ((z, y, x, seg), nt) in enumerate(tbars.items()):
        skel = skel_ids.setdefault((seg, nt), len(skel_ids) + 1)
        synapses.append({"synapse_id": sid, "x": x, "y": y, "z": z, "skeleton_id": skel, "prepost": "pre",
                         "brain_region": "synthetic"})
    skeletons, hemilineages = [], {}
    for (seg, nt), skel in skel_ids.items():
        hl_id = 100 * (TRANSMITTERS.index(nt) + 1) + seg % max(1, hemilineages_per_class)
        hemilineages[hl_id] = {"hemi_lineage_id": hl_id, "hemi_lineage_name": f"{nt}_{hl_id % 100}"}
        skeletons.append({"skeleton_id": skel, "nt_known": [nt], "hemi_lineage_id": hl_id})
    return synapses, skeletons, sorted(hemilineages.values(), key=lambda h: h["hemi_lineage_id"])


#: defaults of the synthetic transmitter data set, (z, y, x).  The voxel size is FAFB's (Synister's data):
#: the [TransmitterTraining] defaults (voxel_size, a 16 x 160 x 160 cube) are FAFB's too, so these data
#: train with an unedited config.  1.6 x 3.2 x 3.2 um at 10 T-bars per um^3 gives about 140 synapses,
#: enough for a three-part skeleton split of six classes.
SYNTHETIC_SHAPE = (40, 800, 800)
SYNTHETIC_VOXEL_SIZE = (40, 4, 4)
SYNTHETIC_DENSITY = 10.0


def write_synthetic_dataset(out_dir, *, shape=SYNTHETIC_SHAPE, voxel_size=SYNTHETIC_VOXEL_SIZE, seed: int = 0,
                            synapse_types=None, synapse_density: float = SYNTHETIC_DENSITY,
                            hemilineages_per_class: int = 2, **params) -> dict[str, Path]:
    """Write ``raw.zarr`` (the synthetic CREMI container) and the three JSON exports into ``out_dir``.

    ``shape`` is voxels and ``voxel_size`` nm, both (z, y, x); ``synapse_density`` is T-bars per
    cubic micrometre.  ``synapse_types`` restricts the generated classes (uniform over them;
    default all six).  ``params`` go to :func:`synful.synthetic.generate`.
    Returns the paths by name (``raw``, ``synapses``, ``skeletons``,
    ``hemilineages``); JSON files are written atomically.
    """
    from ..io.cremi import read_annotations, read_transmitters
    from ..synthetic import TRANSMITTERS, write_synthetic

    probs = None
    if synapse_types:
        unknown = [t for t in synapse_types if t.lower() not in TRANSMITTERS]
        if unknown:
            raise SynfulError(f"synapse types {unknown}: the synthetic generator knows {', '.join(TRANSMITTERS)}")
        wanted = {t.lower() for t in synapse_types}
        probs = [1.0 if t in wanted else 0.0 for t in TRANSMITTERS]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = write_synthetic(out_dir / "raw.zarr", shape, seed=seed, voxel_size=voxel_size,
                          synapse_density=synapse_density, transmitter_probs=probs, **params)
    synapses, skeletons, hemilineages = synapse_records(read_annotations(raw), read_transmitters(raw),
                                                        hemilineages_per_class=hemilineages_per_class)
    paths = {"raw": raw}
    for name, recs in (("synapses", synapses), ("skeletons", skeletons), ("hemilineages", hemilineages)):
        paths[name] = write_json(out_dir / f"{name}.json", recs, indent=1)
    return paths
