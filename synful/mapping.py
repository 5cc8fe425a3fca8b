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
to (z, y, x) on reading), JSON node lists ``<skeleton_id>.json`` there, or one
JSON node-list file of synful_fafb's ``gt_skeletons`` format (``{"id",
"position": [z, y, x], "parent_id", "neuron_id"}`` per node, nm; the
``neuron_id`` is the skeleton id); see :func:`read_skeletons`.

:func:`map_partners` is arrays in, arrays out.  :func:`map_run` maps a result
store blockwise (daisy, ``block_shape`` nm over the segmentation's ROI):

- a block maps the post sites in its write ROI (``post_skel_id``) and, in a
  second query, the pre sites in it (``pre_skel_id``), so each site is mapped
  by exactly one block; the blocks on the border of the grid also take every
  site beyond the segmentation on their side (those are misses);
- it reads only the segment ids under its sites and under the skeleton nodes
  inside its ROI grown by ``distance_upper_bound`` (the *context*): a node
  farther than that from every site of the block can neither win nor tie, so
  the result equals that of one block over everything (ties and misses
  included).  ``min_skeleton_nodes`` > 1 counts a skeleton's nodes per segment
  over the whole volume (one pass over all nodes first), as the whole-run
  mapping does;
- without ``distance_upper_bound`` (no finite context) or ``block_shape`` it
  runs as one block;
- it writes back only the ids that changed (:meth:`~synful.store.Store.set_skel_ids`,
  one side at a time).

Blocks run through daisy's scheduler, by default in this process one after
the other (the skeletons are read once and node segment ids are cached between
blocks), or in ``num_workers`` daisy worker processes that each open their
own store and segmentation.  There are no done markers: a rerun maps every
block again and, the ids being a function of partners, skeletons and
segmentation only, changes nothing unless an input changed (idempotent).
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


def _check_skel_id(skel_id: int, where) -> int:
    if skel_id == NO_ID:
        raise MappingError(f"{where}: skeleton id {NO_ID} is reserved for 'no skeleton'")
    return skel_id


def read_skeletons(source) -> Skeletons:
    """All skeletons of ``source``: a directory of ``<skeleton_id>.swc`` and/or ``<skeleton_id>.json`` files
    (the file stem is the integer skeleton id), or one JSON node-list file of synful_fafb's ``gt_skeletons``
    format holding several neurons (each node's ``neuron_id`` is its skeleton id)."""
    from .io.skeletons import _read_node_list, read_skeleton_json

    source = Path(source)
    ids, positions = [], []
    try:
        if source.is_file() and source.suffix.lower() == ".json":
            nodes = _read_node_list(source)
            by_neuron: dict[int, list] = {}
            for k, d in enumerate(nodes):
                try:
                    nid = int(d["neuron_id"])
                except (KeyError, TypeError, ValueError):
                    raise MappingError(f"{source}: node {k}: needs an integer neuron_id (the skeleton id)") from None
                by_neuron.setdefault(_check_skel_id(nid, f"{source}: node {k}"), []).append(d)
            for nid in sorted(by_neuron):
                pos = read_skeleton_json(source, nid).positions
                ids.append(np.full(len(pos), nid, dtype=np.int64))
                positions.append(pos)
        elif source.is_dir():
            seen: dict[int, Path] = {}
            for f in sorted([*source.glob("*.swc"), *source.glob("*.json")]):
                try:
                    skel_id = _check_skel_id(int(f.stem), f)
                except ValueError:
                    raise MappingError(f"{f}: file name must be <skeleton_id>{f.suffix} with an integer id") from None
                if skel_id in seen:
                    raise MappingError(f"{f}: skeleton {skel_id} is also in {seen[skel_id].name}")
                seen[skel_id] = f
                pos = (read_swc(f) if f.suffix == ".swc" else read_skeleton_json(f, skel_id)).positions
                ids.append(np.full(len(pos), skel_id, dtype=np.int64))
                positions.append(pos)
        else:
            raise MappingError(f"{source}: skeleton directory not found (nor a JSON node-list file)")
    except SkeletonError as e:
        raise MappingError(str(e)) from None
    if not ids:
        raise MappingError(f"{source}: no .swc or .json skeleton files")
    return Skeletons(np.concatenate(ids), np.concatenate(positions))


def lookup_segments(segmentation, points_nm, *, chunk_voxels=(64, 256, 256)) -> np.ndarray:
    """Segment ids (int64) under points (n, 3) nm (z, y, x) in a funlib Array; NO_ID outside its ROI.

    Points are grouped into chunks of ``chunk_voxels`` and each chunk reads
    only the bounding box of its points, so scattered points never read the
    whole volume.

    The one segment lookup of skeleton mapping and of extraction (pre and post segment ids,
    :func:`synful.extract.find_partners`).
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


#: site x node pairs up to which a segment's distances are computed densely (numpy) instead of with one
#: KD-tree per candidate skeleton (many small skeletons in a segment: dense is ~100 x faster)
DENSE_PAIRS = 1 << 22
_DENSE_CHUNK = 1 << 20  # site x node pairs per dense step (3 x 8 MB of differences)


def _nearest_per_skeleton(sites: np.ndarray, pos: np.ndarray, starts: np.ndarray, skel_rows) -> np.ndarray:
    """(skeletons, sites) distance from each site to each skeleton's nearest node.

    ``pos`` holds the nodes grouped by skeleton, group k starting at ``starts[k]``; ``skel_rows(k)`` gives
    group k's positions for the KD-tree path.  Both paths compute sqrt(dz^2 + dy^2 + dx^2) summed in that
    order, as cKDTree does, so they give the same floats.
    """
    from scipy.spatial import cKDTree

    dist = np.empty((len(starts), len(sites)))
    if len(sites) * len(pos) <= DENSE_PAIRS:
        step = max(1, _DENSE_CHUNK // max(1, len(pos)))
        for a in range(0, len(sites), step):
            diff = sites[a:a + step, None, :] - pos[None, :, :]
            d = np.sqrt((diff * diff).sum(axis=-1))
            dist[:, a:a + step] = np.minimum.reduceat(d, starts, axis=1).T
    else:
        for k in range(len(starts)):
            dist[k] = cKDTree(skel_rows(k)).query(sites, k=1)[0]
    return dist


def map_sites(sites_nm, site_segments, skeletons: Skeletons, node_segments, *, distance_upper_bound=None,
              min_skeleton_nodes: int = 1, ignore_ids=(0,)) -> np.ndarray:
    """Skeleton id (int64, NO_ID on a miss) for each site, given site and node segment ids (see the module)."""
    sites = np.asarray(sites_nm, dtype=np.float64).reshape(-1, 3)
    site_segments = np.asarray(site_segments, dtype=np.int64).reshape(-1)
    node_segments = np.asarray(node_segments, dtype=np.int64).reshape(-1)
    out = np.full(len(sites), NO_ID, dtype=np.int64)
    ignore = np.asarray([NO_ID, *ignore_ids], dtype=np.int64)
    valid = ~np.isin(node_segments, ignore)
    n_seg, n_skel, n_pos = node_segments[valid], skeletons.skeleton_ids[valid], skeletons.positions[valid]
    # nodes sorted by (segment, skeleton id, input order), sites by segment: each segment is a slice
    n_order = np.lexsort((np.arange(len(n_seg)), n_skel, n_seg))
    n_seg, n_skel, n_pos = n_seg[n_order], n_skel[n_order], n_pos[n_order]
    s_order = np.argsort(site_segments, kind="stable")
    s_seg = site_segments[s_order]
    bound = np.inf if distance_upper_bound is None else float(distance_upper_bound)
    for seg in np.unique(site_segments[~np.isin(site_segments, ignore)]):
        at = s_order[np.searchsorted(s_seg, seg, "left"):np.searchsorted(s_seg, seg, "right")]
        lo, hi = np.searchsorted(n_seg, seg, "left"), np.searchsorted(n_seg, seg, "right")
        skel_ids, first, counts = np.unique(n_skel[lo:hi], return_index=True, return_counts=True)  # ascending
        keep = counts >= min_skeleton_nodes
        if not keep.any():
            continue
        skel_ids, first, counts = skel_ids[keep], first[keep] + lo, counts[keep]
        rows = np.concatenate([np.arange(f, f + c) for f, c in zip(first, counts)])
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        dist = _nearest_per_skeleton(sites[at], n_pos[rows], starts,
                                     lambda k: n_pos[first[k]:first[k] + counts[k]])
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


def _node_index(skeletons: Skeletons):
    """Node order sorted by z, and the sorted z, for selecting the nodes of a box quickly."""
    order = np.argsort(skeletons.positions[:, 0], kind="stable")
    return order, skeletons.positions[order, 0]


def _nodes_in(skeletons: Skeletons, index, begin, end) -> np.ndarray:
    """Indices (ascending) of the nodes with begin <= position < end (nm, (z, y, x))."""
    order, z = index
    lo, hi = np.searchsorted(z, begin[0], "left"), np.searchsorted(z, end[0], "left")
    cand = order[lo:hi]
    pos = skeletons.positions[cand]
    inside = np.all((pos >= np.asarray(begin, float)) & (pos < np.asarray(end, float)), axis=1)
    return np.sort(cand[inside])


class _BlockMapper:
    """What one block does (see the module); holds the skeletons, the node segment cache and the counts."""

    #: a bound beyond every coordinate: border blocks take all sites on their outer side
    FAR = 2 ** 60

    def __init__(self, store, skeletons: Skeletons, segmentation, *, distance_upper_bound, min_skeleton_nodes,
                 ignore_ids, prepared=None):
        self.store, self.skeletons, self.segmentation = store, skeletons, segmentation
        self.bound = distance_upper_bound
        self.min_nodes = int(min_skeleton_nodes)
        self.ignore_ids = tuple(ignore_ids)
        self.index = _node_index(skeletons)
        self.node_segments = np.full(len(skeletons), NO_ID - 1, dtype=np.int64)  # NO_ID - 1: not looked up yet
        self.usable = np.ones(len(skeletons), bool)
        if prepared is not None:  # (node_segments, usable) of another mapper: the global pass is done
            self.node_segments[:], self.usable[:] = prepared
        elif self.min_nodes > 1:
            # a skeleton's node count per segment is global (not per block): look all nodes up once
            self.node_segments[:] = lookup_segments(segmentation, skeletons.positions)
            pairs = np.stack([self.node_segments, skeletons.skeleton_ids], axis=1)
            _, inv, counts = np.unique(pairs, axis=0, return_inverse=True, return_counts=True)
            self.usable = counts[inv.reshape(-1)] >= self.min_nodes
        self.seg_begin = np.asarray(segmentation.roi.begin, dtype=np.int64)
        self.seg_end = np.asarray(segmentation.roi.end, dtype=np.int64)
        self.changed: list[np.ndarray] = []
        self.blocks = 0

    def site_bounds(self, write_roi):
        """The write ROI, opened to +-infinity on the sides where it reaches the segmentation's border."""
        begin = np.asarray(write_roi.begin, dtype=np.int64)
        end = np.asarray(write_roi.end, dtype=np.int64)
        begin = np.where(begin <= self.seg_begin, -self.FAR, begin)
        end = np.where(end >= self.seg_end, self.FAR, end)
        return begin, end

    def __call__(self, block) -> None:
        from funlib.geometry import Coordinate, Roi

        begin, end = self.site_bounds(block.write_roi)
        site_roi = Roi(Coordinate(*begin.tolist()), Coordinate(*(end - begin).tolist()))
        read = block.read_roi
        nodes = _nodes_in(self.skeletons, self.index, np.asarray(read.begin), np.asarray(read.end))
        nodes = nodes[self.usable[nodes]]
        todo = nodes[self.node_segments[nodes] == NO_ID - 1]
        if len(todo):
            self.node_segments[todo] = lookup_segments(self.segmentation, self.skeletons.positions[todo])
        local = Skeletons(self.skeletons.skeleton_ids[nodes], self.skeletons.positions[nodes])
        for side in ("post", "pre"):
            partners = self.store.query(site_roi, site=side)
            if not len(partners):
                continue
            sites = np.stack([partners[f"{side}_{a}"] for a in "zyx"], axis=1).astype(np.float64)
            ids = map_sites(sites, lookup_segments(self.segmentation, sites), local, self.node_segments[nodes],
                            distance_upper_bound=self.bound, min_skeleton_nodes=1, ignore_ids=self.ignore_ids)
            changed = ids != partners[f"{side}_skel_id"]
            if changed.any():
                self.store.set_skel_ids(partners["id"][changed], **{f"{side}_skel_ids": ids[changed]})
                self.changed.append(partners["id"][changed])
        self.blocks += 1


def _map_worker(spec: dict) -> None:
    """A daisy worker process of :func:`map_run`: opens its own store and segmentation, maps blocks until the
    scheduler has none left (a failed block is reported, not done, and the next one served)."""
    import daisy.v2 as daisy

    from .cluster import serve_blocks
    from .io.volumes import open_volume

    store = spec["store_factory"]()
    try:
        mapper = _BlockMapper(store, spec["skeletons"], open_volume(*spec["segmentation"]),
                              distance_upper_bound=spec["distance_upper_bound"],
                              min_skeleton_nodes=spec["min_skeleton_nodes"], ignore_ids=spec["ignore_ids"],
                              prepared=spec["prepared"])
        serve_blocks(daisy.Client(), mapper, keep_going=True)
    finally:
        store.close()


def map_run(store, skeletons, segmentation, *, distance_upper_bound=None, min_skeleton_nodes: int = 1,
            ignore_ids=(0,), block_shape=None, batch_rows: int = 100_000, log_dir=None, num_workers: int = 1,
            store_factory=None, segmentation_spec=None) -> dict:
    """Map every partner of ``store`` blockwise and write its skeleton ids back (idempotent; see the module).

    ``skeletons`` is a :class:`Skeletons` or a skeleton source (:func:`read_skeletons`); ``block_shape``
    (nm, (z, y, x)) the write blocks over the segmentation's ROI (None: one
    block; also one block without ``distance_upper_bound``).  Returns counts:
    ``partners``, ``pre_mapped``, ``post_mapped``, ``both_mapped``,
    ``changed`` (partners with an id that changed; None with worker processes) and ``blocks``.  ``log_dir``:
    where daisy writes its per-worker logs (None: none).

    ``num_workers`` > 1 maps the blocks in that many daisy worker processes; each opens its own store and
    segmentation, so it needs ``store_factory`` (a picklable callable returning this store, e.g.
    ``functools.partial(open_run_store, predict_dir)``) and ``segmentation_spec`` ``(container, dataset)``.
    """
    import daisy.v2 as daisy
    from funlib.geometry import Roi

    if not isinstance(skeletons, Skeletons):
        skeletons = read_skeletons(skeletons)
    seg_roi = segmentation.roi
    block, ctx = _block_layout(seg_roi, distance_upper_bound, block_shape)
    if store.count():
        store.create()  # idempotent; adds the pre-site index to collections made before it existed
    workers = max(1, int(num_workers))
    if workers > 1 and (store_factory is None or segmentation_spec is None):
        raise MappingError("skeleton mapping with worker processes needs store_factory and segmentation_spec")
    mapper = _BlockMapper(store, skeletons, segmentation, distance_upper_bound=distance_upper_bound,
                          min_skeleton_nodes=min_skeleton_nodes, ignore_ids=ignore_ids)
    if workers > 1:
        import functools

        spec = {"store_factory": store_factory, "skeletons": skeletons, "segmentation": tuple(segmentation_spec),
                "distance_upper_bound": distance_upper_bound, "min_skeleton_nodes": min_skeleton_nodes,
                "ignore_ids": tuple(ignore_ids), "prepared": (mapper.node_segments, mapper.usable)}
        process = functools.partial(_map_worker, spec)
    else:
        process = mapper
    task = daisy.Task("map_skeletons", total_roi=seg_roi.grow(ctx, ctx), read_roi=Roi((0, 0, 0), block + ctx * 2),
                      write_roi=Roi(ctx, block), process_function=process, read_write_conflict=False,
                      fit="overhang", max_workers=workers, max_retries=1 if workers > 1 else 0,
                      tracking_path=False)
    logger.info("skeleton mapping: %s blocks of %s nm (context %s nm), %d worker(s)", task.block_grid_shape, block,
                ctx, workers)
    state = _run_task(task, workers, log_dir)
    stats = _mapped_counts(store, batch_rows)
    if workers > 1:
        stats["changed"] = None  # counted in the worker processes, which report nothing back
    else:
        stats["changed"] = int(len(np.unique(np.concatenate(mapper.changed)))) if mapper.changed else 0
    stats["blocks"] = int(state.completed_count)
    logger.info("skeleton mapping: %s", stats)
    return stats


def _block_layout(seg_roi, distance_upper_bound, block_shape):
    """(write block, context) in nm: one block over the ROI without a bound or a block shape."""
    from funlib.geometry import Coordinate

    if distance_upper_bound is None or block_shape is None:
        if block_shape is not None:
            logger.warning("skeleton mapping without distance_upper_bound has no finite context: one block")
        return Coordinate(*seg_roi.shape), Coordinate(0, 0, 0)
    if len(block_shape) != 3 or any(int(b) <= 0 for b in block_shape):
        raise MappingError(f"block_shape: expected three positive sizes in nm (z, y, x), got {block_shape}")
    block = Coordinate(*(min(int(b), int(s)) for b, s in zip(block_shape, seg_roi.shape)))
    c = int(np.ceil(float(distance_upper_bound))) + 1
    return block, Coordinate(c, c, c)


def _run_task(task, workers: int, log_dir):
    """Run the mapping task with daisy; its state once every block is done (MappingError otherwise)."""
    import daisy.logging as daisy_logging
    import daisy.v2 as daisy

    old_log_dir = daisy_logging.get_log_basedir()
    daisy_logging.set_log_basedir(log_dir)  # None: no daisy log files (not in the working directory)
    try:
        states = daisy.run_blockwise([task], multiprocessing=workers > 1, progress=False, block_tracking=False,
                                     return_states=True, summary=False)
    except SynfulError:
        raise
    except Exception as e:  # serial daisy raises a block's error
        raise MappingError(f"skeleton mapping stopped at a failed block ({type(e).__name__}: {e}); rerun: "
                           f"finished blocks are rewritten with the same ids") from e
    finally:
        daisy_logging.set_log_basedir(old_log_dir)
    state = states["map_skeletons"]
    if state.completed_count != state.total_block_count:
        err = (state.last_worker_error or "").strip().splitlines()
        raise MappingError(f"skeleton mapping finished {state.completed_count} of {state.total_block_count} blocks"
                           + (f" (last error: {err[-1]})" if err else "") + "; rerun")
    return state


def _mapped_counts(store, batch_rows: int) -> dict:
    """How many partners the store holds, and how many of them have a pre, a post and both skeleton ids."""
    stats = {"partners": 0, "pre_mapped": 0, "post_mapped": 0, "both_mapped": 0}
    for batch in store.iter_batches(batch_rows):
        pre, post = batch["pre_skel_id"] != NO_ID, batch["post_skel_id"] != NO_ID
        stats["partners"] += int(len(batch))
        stats["pre_mapped"] += int(pre.sum())
        stats["post_mapped"] += int(post.sum())
        stats["both_mapped"] += int((pre & post).sum())
    return stats
