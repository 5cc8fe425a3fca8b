"""CREMI containers: raw, neuron ids and synaptic partner annotations.

The CREMI layout (HDF5 as published, or the same tree in a zarr v2 container)::

    volumes/raw                         uint8 (z, y, x), attrs resolution (nm), [offset (nm)]
    volumes/labels/neuron_ids           uint64 (z, y, x), same attrs
    annotations                         group, attr offset (nm, z/y/x; 0 when absent)
    annotations/ids                     uint64 (N,)    one id per site
    annotations/locations               float (N, 3)   nm, z/y/x, relative to annotations.offset
    annotations/types                   str (N,)       "presynaptic_site" | "postsynaptic_site"
    annotations/presynaptic_site/partners        uint64 (M, 2)  (pre site id, post site id)
    annotations/presynaptic_site/transmitters    str (M,)       synful extension: the
        neurotransmitter of each partner row's presynaptic site ("" = unknown)

A polyadic synapse is one presynaptic site listed in several partner rows.
In memory, each partner row becomes one :data:`~synful.io.partners.PARTNER_DTYPE`
record (``id`` = row index, locations = annotation location + offset,
rounded to int nm, score 1.0).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from funlib.persistence import Array

from ..errors import SynfulError
from .files import atomic_write
from .partners import PARTNER_DTYPE, empty_partners
from .volumes import DatasetNotFoundError, VolumeError, lookup_ids, open_volume, volume_format

__all__ = [
    "RAW", "NEURON_IDS", "ANNOTATIONS", "PARTNERS", "TRANSMITTERS",
    "CremiData",
    "read_annotations",
    "read_transmitters",
    "write_annotations",
    "read_cremi",
    "write_cremi",
]

RAW = "volumes/raw"
NEURON_IDS = "volumes/labels/neuron_ids"
ANNOTATIONS = "annotations"
PARTNERS = "annotations/presynaptic_site/partners"
TRANSMITTERS = "annotations/presynaptic_site/transmitters"
PRE_TYPE = "presynaptic_site"
POST_TYPE = "postsynaptic_site"


@contextmanager
def _open_group(container, mode: str = "r"):
    """The root group of an HDF5 file (h5py) or a zarr v2 container; both index like dicts."""
    container = Path(container)
    if mode == "r" and not container.exists():
        raise DatasetNotFoundError(f"{container}: container not found")
    fmt = volume_format(container)
    if fmt == "hdf5":
        import h5py

        with h5py.File(container, "r" if mode == "r" else "a") as f:
            yield f
    elif fmt == "zarr":
        import zarr

        try:
            yield zarr.open_group(str(container), mode=mode)
        except zarr.errors.GroupNotFoundError:
            raise DatasetNotFoundError(f"{container}: not a zarr group") from None
    else:
        raise VolumeError(f"{container}: CREMI annotations are read from HDF5 or zarr v2, not {fmt}")


def _strings(values) -> list[str]:
    out = []
    for v in np.asarray(values).ravel().tolist():
        out.append(v.decode("utf-8") if isinstance(v, bytes) else str(v))
    return out


def _annotation_table(root, container):
    if ANNOTATIONS not in root:
        raise DatasetNotFoundError(f"{container}: no '{ANNOTATIONS}' group (CREMI annotations)")
    ann = root[ANNOTATIONS]
    offset = np.asarray(ann.attrs.get("offset", (0, 0, 0)), dtype=np.float64).ravel()
    if offset.shape != (3,):
        raise VolumeError(f"{container}/{ANNOTATIONS}: offset attribute {offset.tolist()} is not z, y, x")
    if "ids" not in ann:
        return np.zeros(0, np.uint64), np.zeros((0, 3)), [], offset
    for key in ("locations", "types"):
        if key not in ann:
            raise DatasetNotFoundError(f"{container}: dataset '{ANNOTATIONS}/{key}' not found")
    ids = np.asarray(ann["ids"][...], dtype=np.uint64).ravel()
    locs = np.asarray(ann["locations"][...], dtype=np.float64).reshape(-1, 3)
    types = _strings(ann["types"][...])
    if not (len(ids) == len(locs) == len(types)):
        raise VolumeError(f"{container}/{ANNOTATIONS}: ids ({len(ids)}), locations ({len(locs)}) and "
                          f"types ({len(types)}) differ in length")
    return ids, locs, types, offset


def read_annotations(container, labels_dataset: str | None = NEURON_IDS) -> np.ndarray:
    """Partners (PARTNER_DTYPE, one row per CREMI partner pair) from an HDF5 or zarr v2 container.

    Locations are nm (z, y, x) with the annotations' ``offset`` attribute
    added, rounded to int.  ``pre_seg_id`` / ``post_seg_id`` are looked up in
    ``labels_dataset`` when it exists in the container (NO_ID outside it, or
    when ``labels_dataset`` is None); skeleton ids are NO_ID.  ``id`` is the
    row index in ``annotations/presynaptic_site/partners``, ``score`` 1.0.
    """
    with _open_group(container) as root:
        ids, locs, types, offset = _annotation_table(root, container)
        pairs = np.asarray(root[PARTNERS][...], dtype=np.uint64).reshape(-1, 2) if PARTNERS in root \
            else np.zeros((0, 2), np.uint64)
        has_labels = labels_dataset is not None and labels_dataset in root
    index = {int(i): k for k, i in enumerate(ids.tolist())}
    out = empty_partners(len(pairs))
    out["id"] = np.arange(len(pairs))
    out["score"] = 1.0
    for r, (pre, post) in enumerate(pairs.tolist()):
        for site, want, prefix in ((pre, PRE_TYPE, "pre"), (post, POST_TYPE, "post")):
            k = index.get(int(site))
            if k is None:
                raise VolumeError(f"{container}/{PARTNERS}[{r}]: {prefix} site id {site} is not in "
                                  f"{ANNOTATIONS}/ids")
            if types[k] != want:
                raise VolumeError(f"{container}/{PARTNERS}[{r}]: site {site} has type {types[k]!r}, "
                                  f"expected {want!r}")
            loc = np.rint(locs[k] + offset).astype(np.int64)
            out[r][f"{prefix}_z"], out[r][f"{prefix}_y"], out[r][f"{prefix}_x"] = loc
    if has_labels and len(out):
        labels = open_volume(container, labels_dataset)
        out["pre_seg_id"] = lookup_ids(labels, np.stack([out["pre_z"], out["pre_y"], out["pre_x"]], 1))
        out["post_seg_id"] = lookup_ids(labels, np.stack([out["post_z"], out["post_y"], out["post_x"]], 1))
    return out


def read_transmitters(container) -> np.ndarray:
    """Neurotransmitter names (str array) aligned with the rows of :func:`read_annotations`.

    Reads ``annotations/presynaptic_site/transmitters``; ``""`` where unknown
    (all ``""`` when the container has none).
    """
    with _open_group(container) as root:
        n = len(root[PARTNERS]) if PARTNERS in root else 0
        if TRANSMITTERS not in root:
            return np.array([""] * n, dtype=object)
        names = _strings(root[TRANSMITTERS][...])
    if len(names) != n:
        raise VolumeError(f"{container}/{TRANSMITTERS}: {len(names)} entries for {n} partner rows")
    return np.array(names, dtype=object)


def _site_table(partners: np.ndarray, id_offset: int):
    """(ids, locations, types, pairs): presynaptic sites shared by partners with the same pre location and id."""
    ids, locs, types, pairs = [], [], [], []
    pre_index: dict[tuple, int] = {}
    next_id = int(id_offset)
    for p in partners:
        key = (int(p["pre_z"]), int(p["pre_y"]), int(p["pre_x"]), int(p["pre_seg_id"]))
        if key not in pre_index:
            pre_index[key] = next_id
            ids.append(next_id)
            locs.append(key[:3])
            types.append(PRE_TYPE)
            next_id += 1
        post_id = next_id
        next_id += 1
        ids.append(post_id)
        locs.append((int(p["post_z"]), int(p["post_y"]), int(p["post_x"])))
        types.append(POST_TYPE)
        pairs.append((pre_index[key], post_id))
    return (np.asarray(ids, np.uint64), np.asarray(locs, np.float64).reshape(-1, 3), types,
            np.asarray(pairs, np.uint64).reshape(-1, 2))


def write_annotations(container, partners: np.ndarray, *, transmitters=None, offset=(0, 0, 0),
                      id_offset: int = 1) -> None:
    """Write ``partners`` as CREMI annotations into an HDF5 file or zarr v2 container (replacing any).

    Partners with the same pre location and ``pre_seg_id`` share one
    presynaptic site (polyadic synapse).  Site ids count up from ``id_offset``
    in partner order; locations are stored relative to ``offset`` (nm, z/y/x,
    written as the ``annotations`` group's ``offset`` attribute).
    ``transmitters`` (one name per partner, optional) goes to
    ``annotations/presynaptic_site/transmitters``.
    """
    partners = np.asarray(partners, dtype=PARTNER_DTYPE)
    if transmitters is not None and len(transmitters) != len(partners):
        raise SynfulError(f"{container}: {len(transmitters)} transmitters for {len(partners)} partners")
    ids, locs, types, pairs = _site_table(partners, id_offset)
    locs = locs - np.asarray(offset, np.float64)
    is_h5 = volume_format(container) == "hdf5"
    with _open_group(container, "a") as root:
        if ANNOTATIONS in root:
            del root[ANNOTATIONS]
        ann = root.create_group(ANNOTATIONS)
        ann.attrs["offset"] = [int(o) for o in offset]

        def strings(group, name, values):
            # HDF5: variable-length UTF-8 strings, as CREMI; zarr v2: fixed-width bytes (no object codec)
            if is_h5:
                import h5py

                group.create_dataset(name, data=np.array(values, dtype=object), dtype=h5py.string_dtype())
            else:
                group.create_dataset(name, data=np.array(values, dtype="S") if values else np.zeros(0, "S1"))

        ann.create_dataset("ids", data=ids)
        ann.create_dataset("locations", data=locs)
        strings(ann, "types", types)
        pre = ann.create_group("presynaptic_site")
        pre.create_dataset("partners", data=pairs)
        if transmitters is not None:
            strings(pre, "transmitters", [str(t) for t in transmitters])

@dataclass(frozen=True)
class CremiData:
    """A CREMI container opened: lazily read volumes and the partner list."""

    raw: Array
    labels: Array | None
    partners: np.ndarray
    transmitters: np.ndarray


def read_cremi(path, raw_dataset: str = RAW, labels_dataset: str | None = NEURON_IDS) -> CremiData:
    """Open a CREMI HDF5 file (or zarr v2 container in the same layout).

    ``labels`` is None when ``labels_dataset`` is None or missing; partners
    are empty when the file has no annotations (CREMI test volumes).
    """
    raw = open_volume(path, raw_dataset)
    labels = None
    if labels_dataset is not None:
        try:
            labels = open_volume(path, labels_dataset)
        except DatasetNotFoundError:
            labels = None
    with _open_group(path) as root:
        has_ann = ANNOTATIONS in root
    partners = read_annotations(path, labels_dataset if labels is not None else None) if has_ann \
        else empty_partners(0)
    transmitters = read_transmitters(path) if has_ann else np.array([], dtype=object)
    return CremiData(raw, labels, partners, transmitters)


def write_cremi(path, raw: np.ndarray, voxel_size, *, labels: np.ndarray | None = None,
                partners: np.ndarray | None = None, transmitters=None, offset=(0, 0, 0)) -> Path:
    """Write a CREMI-layout HDF5 file atomically (temp file + rename): raw, labels, annotations.

    Volumes get ``resolution`` and ``offset`` attributes (nm, z/y/x); the
    annotations' offset is ``offset`` too.
    """
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            for name, data in ((RAW, raw), (NEURON_IDS, labels)):
                if data is None:
                    continue
                ds = f.create_dataset(name, data=data, compression="gzip",
                                      chunks=tuple(min(s, c) for s, c in zip(data.shape, (16, 256, 256))))
                ds.attrs["resolution"] = [int(v) for v in voxel_size]
                ds.attrs["offset"] = [int(v) for v in offset]
        if partners is not None:
            write_annotations(tmp, partners, transmitters=transmitters, offset=offset)

    return atomic_write(path, write)
