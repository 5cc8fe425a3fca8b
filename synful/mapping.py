"""Synapse to skeleton mapping: give each partner its pre and post skeleton ids.

The FAFB formulation (Synful's ``synapse_mapping.py``): a partner site belongs
to the skeleton whose nodes lie in the site's segment.

- Every skeleton node gets the segment id under it in the segmentation (nodes
  outside its ROI or on an ignored id, by default background 0, take part in
  nothing).
- For a site (pre or post), the candidates are the skeletons with nodes in
  the site's segment (the segment under the site in the same segmentation).
  Per candidate, the distance (nm, Euclidean in (z, y, x)) from the site to
  its nearest node *in that segment*; the closest candidate wins, on equal
  distances the lowest skeleton id.
- Misses are ``NO_ID``: a site outside the segmentation, on an ignored id, in
  a segment without skeleton nodes, or whose winning distance is greater than
  ``distance_upper_bound`` (a distance equal to the bound still maps).  Synful
  writes -2 for the last case; here every miss is ``NO_ID``.
- ``min_skeleton_nodes``: a skeleton with fewer nodes than this inside a
  segment is no candidate there (Synful's ``num_skel_nodes_ignore + 1``, against
  stray nodes).

Skeletons are SWC files ``<skeleton_id>.swc`` in a directory (``id type x y z
radius parent`` per line, ``#`` comments, coordinates in nm x, y, z; converted
to (z, y, x) on reading).

:func:`map_partners` is arrays in, arrays out; :func:`map_run` does a whole-run
pass over a result store (read all partners, map, write ``pre_skel_id`` /
``post_skel_id`` back through :meth:`synful.store.Store.set_skel_ids`).  It is
idempotent: the ids are a function of partners, skeletons and segmentation
only, and a rerun overwrites the previous ones.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .errors import SynfulError
from .io.partners import NO_ID
from .io.skeletons import SkeletonError, read_swc

__all__ = ["MappingError", "Skeletons", "read_skeletons", "lookup_segments", "map_sites",
           "map_partners", "map_run"]

logger = logging.getLogger(__name__)


class MappingError(SynfulError):
    """Skeleton input is missing or malformed; the message names the file and line."""


class Skeletons:
    """Skeleton nodes as flat arrays: ``skeleton_ids`` (n,) int64 and ``positions`` (n, 3) float64 nm (z, y, x)."""

    def __init__(self, skeleton_ids, positions):
        self.skeleton_ids = np.asarray(skeleton_ids, dtype=np.int64).reshape(-1)
        self.positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        if len(self.skeleton_ids) != len(self.positions):
            raise MappingError(f"{len(self.skeleton_ids)} skeleton ids for {len(self.positions)} node positions")

    def __len__(self) -> int:
        return len(self.skeleton_ids)

    def __repr__(self) -> str:
        return f"Skeletons({len(np.unique(self.skeleton_ids))} skeletons, {len(self)} nodes)"


def read_skeletons(directory) -> Skeletons:
    """All ``<skeleton_id>.swc`` files of ``directory`` (the file stem is the integer skeleton id)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise MappingError(f"{directory}: skeleton directory not found")
    ids, positions = [], []
    for f in sorted(directory.glob("*.swc")):
        try:
            skel_id = int(f.stem)
        except ValueError:
            raise MappingError(f"{f}: file name must be <skeleton_id>.swc with an integer id") from None
        if skel_id == NO_ID:
            raise MappingError(f"{f}: skeleton id {NO_ID} is reserved for 'no skeleton'")
        try:
            pos = read_swc(f).positions
        except SkeletonError as e:
            raise MappingError(str(e)) from None
        ids.append(np.full(len(pos), skel_id, dtype=np.int64))
        positions.append(pos)
    if not ids:
        raise MappingError(f"{directory}: no .swc skeleton files")
    return Skeletons(np.concatenate(ids), np.concatenate(positions))


def lookup_segments(segmentation, points_nm, *, chunk_voxels=(64, 256, 256)) -> np.ndarray:
    """Segment ids (int64) under points (n, 3) nm (z, y, x) in a funlib Array; NO_ID outside its ROI.

    Points are grouped into chunks of ``chunk_voxels`` and each chunk reads
    only the bounding box of its points, so scattered points never read the
    whole volume.
    """
    from funlib.geometry import Coordinate, Roi

    points = np.asarray(points_nm, dtype=np.float64).reshape(-1, 3)
    out = np.full(len(points), NO_ID, dtype=np.int64)
    if not len(points):
        return out
    vs = np.asarray(segmentation.voxel_size, dtype=np.int64)
    begin = np.asarray(segmentation.roi.begin, dtype=np.int64)
    end = np.asarray(segmentation.roi.end, dtype=np.int64)
    inside = np.all((points >= begin) & (points < end), axis=1)
    where = np.flatnonzero(inside)
    if not len(where):
        return out
    idx = np.floor((points[where] - begin) / vs).astype(np.int64)
    chunk = idx // np.asarray(chunk_voxels, dtype=np.int64)
    _, group = np.unique(chunk, axis=0, return_inverse=True)
    group = group.reshape(-1)
    for g in np.unique(group):
        sel = group == g
        gi = idx[sel]
        lo, hi = gi.min(axis=0), gi.max(axis=0) + 1
        roi = Roi(Coordinate(*(begin + lo * vs)), Coordinate(*((hi - lo) * vs)))
        data = np.asarray(segmentation.to_ndarray(roi, fill_value=0))
        rel = gi - lo
        out[where[sel]] = data[rel[:, 0], rel[:, 1], rel[:, 2]].astype(np.int64)
    return out


def map_sites(sites_nm, site_segments, skeletons: Skeletons, node_segments, *, distance_upper_bound=None,
              min_skeleton_nodes: int = 1, ignore_ids=(0,)) -> np.ndarray:
    """Skeleton id (int64, NO_ID on a miss) for each site, given site and node segment ids (see the module)."""
    from scipy.spatial import cKDTree

    sites = np.asarray(sites_nm, dtype=np.float64).reshape(-1, 3)
    site_segments = np.asarray(site_segments, dtype=np.int64).reshape(-1)
    node_segments = np.asarray(node_segments, dtype=np.int64).reshape(-1)
    out = np.full(len(sites), NO_ID, dtype=np.int64)
    ignore = np.asarray([NO_ID, *ignore_ids], dtype=np.int64)
    valid = ~np.isin(node_segments, ignore)
    n_seg, n_skel, n_pos = node_segments[valid], skeletons.skeleton_ids[valid], skeletons.positions[valid]
    bound = np.inf if distance_upper_bound is None else float(distance_upper_bound)
    for seg in np.unique(site_segments[~np.isin(site_segments, ignore)]):
        at = np.flatnonzero(site_segments == seg)
        in_seg = n_seg == seg
        skel_ids, counts = np.unique(n_skel[in_seg], return_counts=True)  # ascending: ties -> lowest id
        skel_ids = skel_ids[counts >= min_skeleton_nodes]
        if not len(skel_ids):
            continue
        dist = np.empty((len(skel_ids), len(at)))
        for k, s in enumerate(skel_ids):
            dist[k] = cKDTree(n_pos[in_seg & (n_skel == s)]).query(sites[at], k=1)[0]
        best = np.argmin(dist, axis=0)  # first minimum: the lowest skeleton id on a tie
        d = dist[best, np.arange(len(at))]
        out[at] = np.where(d <= bound, skel_ids[best], NO_ID)
    return out


def map_partners(partners: np.ndarray, skeletons: Skeletons, segmentation, *, distance_upper_bound=None,
                 min_skeleton_nodes: int = 1, ignore_ids=(0,)) -> np.ndarray:
    """A copy of ``partners`` with ``pre_skel_id`` / ``post_skel_id`` set from skeletons and segmentation.

    Site and node segments are both looked up in ``segmentation`` (a funlib
    Array), so the two agree even where the partners' own ``*_seg_id`` came
    from another segmentation (or is missing).
    """
    out = partners.copy()
    node_segments = lookup_segments(segmentation, skeletons.positions)
    kw = dict(distance_upper_bound=distance_upper_bound, min_skeleton_nodes=min_skeleton_nodes,
              ignore_ids=ignore_ids)
    for side in ("pre", "post"):
        sites = np.stack([partners[f"{side}_{a}"] for a in "zyx"], axis=1).astype(np.float64)
        segs = lookup_segments(segmentation, sites)
        out[f"{side}_skel_id"] = map_sites(sites, segs, skeletons, node_segments, **kw)
    return out


def map_run(store, skeletons, segmentation, *, distance_upper_bound=None, min_skeleton_nodes: int = 1,
            ignore_ids=(0,)) -> dict:
    """Whole-run pass: map every partner of ``store`` and write its skeleton ids back (idempotent).

    ``skeletons`` is a :class:`Skeletons` or an SWC directory.  Returns counts:
    ``partners``, ``pre_mapped``, ``post_mapped``, ``both_mapped``, ``changed``.
    """
    if not isinstance(skeletons, Skeletons):
        skeletons = read_skeletons(skeletons)
    partners = store.query()
    mapped = map_partners(partners, skeletons, segmentation, distance_upper_bound=distance_upper_bound,
                          min_skeleton_nodes=min_skeleton_nodes, ignore_ids=ignore_ids)
    changed = (mapped["pre_skel_id"] != partners["pre_skel_id"]) | \
              (mapped["post_skel_id"] != partners["post_skel_id"])
    if changed.any():
        store.set_skel_ids(mapped["id"][changed], mapped["pre_skel_id"][changed], mapped["post_skel_id"][changed])
    pre, post = mapped["pre_skel_id"] != NO_ID, mapped["post_skel_id"] != NO_ID
    stats = {"partners": int(len(mapped)), "pre_mapped": int(pre.sum()), "post_mapped": int(post.sum()),
             "both_mapped": int((pre & post).sum()), "changed": int(changed.sum())}
    logger.info("skeleton mapping: %s", stats)
    return stats
