"""A neuron segmentation from the raw alone: a seeded watershed of the membrane contrast.

What a lab without a segmentation would start with, and what ``synful demo``
uses for the segment lookups, ``split_by_segment`` and the same-segment
filter, so that nothing after training reads the ground-truth labels.

:func:`watershed` (arrays in and out) and :func:`watershed_segmentation`
(container in, container out), per z section (the data are anisotropic: a
40 nm section step against 4-8 nm in plane, and membranes are only seen in
plane):

1. the section is smoothed (Gaussian, ``sigma_nm``);
2. membranes are the voxels darker than ``membrane_threshold`` (uint8 grey
   values; the synthetic data's cytoplasm is ~180, its membranes ~90);
3. seeds are the cell interiors: connected regions of the voxels farther than
   ``seed_distance_nm`` from the nearest membrane voxel (distance transform in
   nm); regions smaller than ``min_seed_voxels`` are dropped;
4. every pixel is flooded from the seeds over the inverted smoothed section
   (:func:`skimage.segmentation.watershed`), so the basins meet on the
   membranes;
5. 2D segments of consecutive sections are merged when their overlap exceeds
   ``link_overlap`` of *each* one's area (union over all sections).

With the defaults, on the demo's synthetic test volume (seed 1000, 40 x 400
x 400 voxels at 40 x 8 x 8 nm) this gives ~560 segments for 45 neurons: 96.5%
of the voxels lie in a segment whose majority neuron is their own (few
merges), neurons are split into several pieces (over-segmentation: the
lookups and the same-segment filter still work, redundancy clustering by
segment pair finds fewer groups), and the pre and post sites of 98% of the
ground-truth partners fall into distinct segments.  ``tests/test_calibrate.py``
asserts >= 90% for both on a smaller volume.  ``synful demo`` uses
``seed_distance_nm = 30`` and ``membrane_threshold = 130``, chosen on its
validation volume.

Output: a uint64 dataset (ids 1..n, no background) with the raw's voxel
size and offset, written into ``out_container`` (zarr) and usable as
``[Extraction] seg_container`` / ``seg_dataset``.  The whole volume is read
into memory: fine for the demo's volumes, not for a whole brain (there is no
blockwise version; a real data set wants an agglomerated segmentation such as
FAFB-FFN1 or FlyWire).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from .errors import SynfulError

__all__ = ["SEGMENTATION_DATASET", "watershed_segmentation", "watershed"]

logger = logging.getLogger(__name__)

#: dataset name :func:`watershed_segmentation` writes by default
SEGMENTATION_DATASET = "volumes/segmentation/watershed"
_PARAMS_ATTR = "synful_watershed"


def watershed(raw: np.ndarray, voxel_size, *, sigma_nm: float = 4.0, membrane_threshold: float = 140.0,
              seed_distance_nm: float = 40.0, min_seed_voxels: int = 20, link_overlap: float = 0.5) -> np.ndarray:
    """Seeded watershed of a (z, y, x) raw array (dark membranes); returns uint64 ids 1..n (module doc)."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed as sk_watershed

    raw = np.asarray(raw)
    if raw.ndim != 3:
        raise SynfulError(f"watershed: expected a 3D (z, y, x) raw array, got shape {raw.shape}")
    vs = np.asarray(voxel_size, dtype=np.float64)
    labels = np.zeros(raw.shape, dtype=np.int64)
    n = 0
    for z in range(raw.shape[0]):
        section = raw[z].astype(np.float32)
        smooth = ndi.gaussian_filter(section, (sigma_nm / vs[1], sigma_nm / vs[2])) if sigma_nm > 0 else section
        dist = ndi.distance_transform_edt(smooth >= membrane_threshold, sampling=vs[1:])
        seeds, k = ndi.label(dist > seed_distance_nm)
        if k:
            sizes = np.bincount(seeds.ravel(), minlength=k + 1)
            keep = sizes >= min_seed_voxels
            keep[0] = False
            relabel = np.zeros(k + 1, dtype=np.int64)
            relabel[keep] = np.arange(1, int(keep.sum()) + 1)
            seeds, k = relabel[seeds], int(keep.sum())
        if k == 0:
            continue
        labels[z] = sk_watershed(smooth.max() - smooth, markers=seeds) + n
        n += k
    if n == 0:
        raise SynfulError(f"watershed: no seeds (no voxel farther than seed_distance_nm = {seed_distance_nm:g} nm "
                          f"from a voxel darker than membrane_threshold = {membrane_threshold:g})")
    return _link_sections(labels, n, link_overlap)


def _link_sections(labels: np.ndarray, n: int, link_overlap: float) -> np.ndarray:
    """Merge 2D segments of consecutive sections that overlap by more than ``link_overlap`` of each one's area."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    edges = []
    for z in range(labels.shape[0] - 1):
        a, b = labels[z].ravel(), labels[z + 1].ravel()
        ok = (a > 0) & (b > 0)
        pairs, counts = np.unique(np.stack([a[ok], b[ok]]), axis=1, return_counts=True)
        link = (counts > link_overlap * sizes[pairs[0]]) & (counts > link_overlap * sizes[pairs[1]])
        edges.append(pairs[:, link])
    e = np.concatenate(edges, axis=1) if edges else np.empty((2, 0), np.int64)
    graph = coo_matrix((np.ones(e.shape[1], np.int8), (e[0], e[1])), shape=(n + 1, n + 1))
    _, comp = connected_components(graph, directed=False)
    # ids 1..m in order of first appearance of their component; 0 (no seed in a section) stays 0
    used = np.unique(comp[1:][sizes[1:] > 0])
    remap = np.zeros(comp.max() + 1, dtype=np.uint64)
    remap[used] = np.arange(1, len(used) + 1, dtype=np.uint64)
    out = remap[comp[labels]]
    out[labels == 0] = 0
    return out


def watershed_segmentation(raw_container, out_container, *, raw_dataset: str = "volumes/raw",
                           out_dataset: str = SEGMENTATION_DATASET, sigma_nm: float = 4.0,
                           membrane_threshold: float = 140.0, seed_distance_nm: float = 40.0,
                           min_seed_voxels: int = 20, link_overlap: float = 0.5, overwrite: bool = False) -> Path:
    """Segment ``raw_container/raw_dataset`` by :func:`watershed`; write ``out_container/out_dataset``.

    Reads only the raw dataset.  The output (uint64, the raw's voxel size and
    offset) records its parameters and source in the attribute
    ``synful_watershed``; an existing output with the same parameters and
    source is reused (returned as is), one with others is an error unless
    ``overwrite``.  Returns ``out_container``.
    """
    import zarr

    from .io.volumes import open_volume, write_volume

    raw_container, out_container = Path(raw_container).resolve(), Path(out_container).resolve()
    params = {"raw": f"{raw_container}/{raw_dataset}", "sigma_nm": float(sigma_nm),
              "membrane_threshold": float(membrane_threshold), "seed_distance_nm": float(seed_distance_nm),
              "min_seed_voxels": int(min_seed_voxels), "link_overlap": float(link_overlap)}
    existing = _existing_params(out_container, out_dataset)
    if existing is not None and not overwrite:
        if existing == params:
            logger.info("%s/%s: reusing the watershed segmentation (same parameters)", out_container, out_dataset)
            return out_container
        raise SynfulError(f"{out_container}/{out_dataset}: exists with other parameters ({json.dumps(existing)}); "
                          f"remove it or use --overwrite")
    raw = open_volume(raw_container, raw_dataset)
    data = raw.to_ndarray(raw.roi)
    if data.ndim != 3:
        raise SynfulError(f"{raw_container}/{raw_dataset}: expected a single-channel 3D raw, got shape {data.shape}")
    labels = watershed(data, raw.voxel_size, sigma_nm=sigma_nm, membrane_threshold=membrane_threshold,
                       seed_distance_nm=seed_distance_nm, min_seed_voxels=min_seed_voxels, link_overlap=link_overlap)
    chunks = tuple(min(s, c) for s, c in zip(labels.shape, (16, 256, 256)))
    write_volume(out_container, out_dataset, labels, raw.voxel_size, raw.roi.offset, chunk_shape=chunks)
    zarr.open_array(str(out_container / out_dataset), mode="r+").attrs[_PARAMS_ATTR] = params
    logger.info("%s/%s: watershed of %s: %d segments", out_container, out_dataset, params["raw"], int(labels.max()))
    return out_container


def _existing_params(container: Path, dataset: str):
    import zarr

    if not (container / dataset).exists():
        return None
    try:
        return dict(zarr.open_array(str(container / dataset), mode="r").attrs.get(_PARAMS_ATTR) or {}) or {}
    except Exception:  # not a zarr array: "other parameters"
        return {}
