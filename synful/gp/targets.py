"""Training targets from synaptic partners: the post-synaptic indicator and the partner vectors.

Both targets paint, around each post-synaptic site, the voxels that lie within a radius (nm,
Euclidean, anisotropic voxels respected) of the site *and* inside the neuron that contains the site
(``labels`` value at the site's voxel).  A voxel's world position is ``roi.begin + index *
voxel_size`` (the funlib convention), so a voxel's vector added to its position gives the pre site
exactly.  Sites on label 0 (background) or outside ``labels`` paint nothing.
"""

from __future__ import annotations

import logging

import gunpowder as gp
import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["AddSynapseIndicator", "AddPartnerVectorMap"]


def _merged_roi(request, key, roi):
    """``roi``, grown to also cover what downstream asked for ``key`` (so the dependency never shrinks it)."""
    if key in request and request[key].roi is not None:
        return roi.union(request[key].roi)
    return roi


def _context(radius: float, dims: int = 3) -> gp.Coordinate:
    c = int(np.ceil(radius))
    return gp.Coordinate((c,) * dims)


def _site_balls(locations, out_roi, voxel_size, labels: gp.Array, radius: float):
    """For each site: ``(i, slices, in_ball, d2, positions)`` over the part of ``out_roi`` it paints.

    ``slices`` index the output array (shape ``out_roi.shape / voxel_size``); ``in_ball`` (bool)
    marks voxels within ``radius`` nm of the site and inside the site's neuron; ``d2`` holds squared
    distances (nm^2) and ``positions`` the voxels' world positions as a (z, y, x) tuple of
    broadcastable arrays.  Sites that paint nothing are skipped.
    """
    vs = np.array(voxel_size, dtype=np.float64)
    out_begin = np.array(out_roi.begin, dtype=np.float64)
    out_shape = np.array(out_roi.shape, dtype=np.int64) // np.array(voxel_size)
    lab_begin = np.array(labels.spec.roi.begin, dtype=np.float64)
    lab_shape = np.array(labels.data.shape[-3:])
    # offset (voxels) of the output grid inside the labels array
    lab_off = np.round((out_begin - lab_begin) / vs).astype(np.int64)
    for i, loc in enumerate(locations):
        loc = np.asarray(loc, dtype=np.float64)
        v = np.floor((loc - lab_begin) / vs).astype(np.int64)
        if np.any(v < 0) or np.any(v >= lab_shape):
            continue
        neuron = labels.data[tuple(v)]
        if neuron == 0:
            continue
        lo = np.maximum(np.ceil((loc - radius - out_begin) / vs).astype(np.int64), 0)
        hi = np.minimum(np.floor((loc + radius - out_begin) / vs).astype(np.int64) + 1, out_shape)
        # the labels must cover the painted box
        lo = np.maximum(lo, -lab_off)
        hi = np.minimum(hi, lab_shape - lab_off)
        if np.any(hi <= lo):
            continue
        idx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        positions = tuple(out_begin[d] + idx[d] * vs[d] for d in range(3))
        d2 = sum((positions[d] - loc[d]) ** 2 for d in range(3))
        slices = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        lab_slices = tuple(slice(int(a + o), int(b + o)) for a, b, o in zip(lo, hi, lab_off))
        in_ball = (d2 <= radius ** 2) & (labels.data[lab_slices] == neuron)
        if in_ball.any():
            yield i, slices, in_ball, d2, positions


class AddSynapseIndicator(gp.BatchFilter):
    """Paints the post-synaptic indicator: a ball around each post site, restricted to its neuron.

    ``indicator`` (uint8, 0/1, shape (z, y, x), voxel size and grid of ``labels``) is 1 on every
    voxel within ``radius`` nm of a post site of ``post_sites`` whose ``labels`` value equals the
    label at the site's voxel, 0 elsewhere.  Post sites outside the requested ROI but within
    ``radius`` of it are requested upstream and paint into it.

    Args:

        post_sites (:class:`gunpowder.GraphKey`):

            The post-synaptic sites (locations in nm).

        labels (:class:`gunpowder.ArrayKey`):

            The neuron segmentation (0: background); defines the output voxel grid.

        indicator (:class:`gunpowder.ArrayKey`):

            The array to create.

        radius (``float``):

            Ball radius in nm.
    """

    def __init__(self, post_sites, labels, indicator, radius):
        self.post_sites = post_sites
        self.labels = labels
        self.indicator = indicator
        self.radius = float(radius)

    def setup(self):
        spec = self.spec[self.labels].copy()
        spec.dtype = np.uint8
        spec.interpolatable = False
        self.provides(self.indicator, spec)
        self.enable_autoskip()

    def prepare(self, request):
        roi = request[self.indicator].roi
        grown = roi.grow(_context(self.radius), _context(self.radius))
        deps = gp.BatchRequest()
        post_roi = grown.intersect(self.spec[self.post_sites].roi)
        deps[self.post_sites] = gp.GraphSpec(roi=_merged_roi(request, self.post_sites, post_roi))
        lab_roi = grown.snap_to_grid(self.spec[self.labels].voxel_size, mode="grow") \
            .intersect(self.spec[self.labels].roi)
        deps[self.labels] = gp.ArraySpec(roi=_merged_roi(request, self.labels, lab_roi.union(roi)))
        return deps

    def process(self, batch, request):
        spec = self.spec[self.indicator].copy()
        spec.roi = request[self.indicator].roi
        shape = spec.roi.shape / spec.voxel_size
        data = np.zeros(shape, dtype=np.uint8)
        locations = [n.location for n in batch.graphs[self.post_sites].nodes]
        for _, slices, in_ball, _, _ in _site_balls(locations, spec.roi, spec.voxel_size,
                                                    batch.arrays[self.labels], self.radius):
            data[slices][in_ball] = 1
        out = gp.Batch()
        out[self.indicator] = gp.Array(data, spec)
        return out


class AddPartnerVectorMap(gp.BatchFilter):
    """Paints partner vectors: for voxels near a post site and in its neuron, the vector to its pre site.

    For every voxel within ``radius`` nm of a post site of ``post_sites`` and inside that site's
    neuron (``labels``), ``vectors`` (float32, shape (3, z, y, x)) holds ``pre - position`` in nm
    (z, y, x), where ``pre`` is the location of the post node's partner (node ``attrs['partner']``
    of ``pre_sites``) and ``position`` the voxel's world position; ``mask`` (float32, (z, y, x)) is
    1 there.  Everywhere else both are 0.  A voxel claimed by several post sites takes the nearest.
    Post sites whose pre site is not in the ``pre_sites`` graph (it lies beyond ``pre_context``)
    paint nothing.

    Args:

        pre_sites (:class:`gunpowder.GraphKey`):

            The pre-synaptic sites (nm).

        post_sites (:class:`gunpowder.GraphKey`):

            The post-synaptic sites (nm), each with a ``partner`` attribute: its pre node id.

        labels (:class:`gunpowder.ArrayKey`):

            The neuron segmentation (0: background); defines the output voxel grid.

        vectors (:class:`gunpowder.ArrayKey`):

            The vector map to create.

        mask (:class:`gunpowder.ArrayKey`):

            The mask of painted voxels to create.

        radius (``float``):

            Radius around each post site in nm.

        pre_context (``float`` or ``tuple`` of ``float``, optional):

            How far (nm, per axis) beyond the requested ROI pre sites are requested; default 0.
    """

    def __init__(self, pre_sites, post_sites, labels, vectors, mask, radius, pre_context=0):
        self.pre_sites = pre_sites
        self.post_sites = post_sites
        self.labels = labels
        self.vectors = vectors
        self.mask = mask
        self.radius = float(radius)
        ctx = np.broadcast_to(np.asarray(pre_context, dtype=np.float64), (3,))
        self.pre_context = gp.Coordinate(np.ceil(ctx).astype(int))

    def setup(self):
        spec = self.spec[self.labels].copy()
        spec.dtype = np.float32
        spec.interpolatable = False
        self.provides(self.vectors, spec.copy())
        self.provides(self.mask, spec.copy())
        self.enable_autoskip()

    def _out_roi(self, request):
        rois = [request[k].roi for k in (self.vectors, self.mask) if k in request]
        roi = rois[0]
        for r in rois[1:]:
            roi = roi.union(r)
        return roi

    def prepare(self, request):
        roi = self._out_roi(request)
        grown = roi.grow(_context(self.radius), _context(self.radius))
        deps = gp.BatchRequest()
        post_roi = grown.intersect(self.spec[self.post_sites].roi)
        deps[self.post_sites] = gp.GraphSpec(roi=_merged_roi(request, self.post_sites, post_roi))
        pre_roi = roi.grow(self.pre_context, self.pre_context).intersect(self.spec[self.pre_sites].roi)
        deps[self.pre_sites] = gp.GraphSpec(roi=_merged_roi(request, self.pre_sites, pre_roi))
        lab_roi = grown.snap_to_grid(self.spec[self.labels].voxel_size, mode="grow") \
            .intersect(self.spec[self.labels].roi)
        deps[self.labels] = gp.ArraySpec(roi=_merged_roi(request, self.labels, lab_roi.union(roi)))
        return deps

    def process(self, batch, request):
        spec = self.spec[self.vectors].copy()
        spec.roi = self._out_roi(request)
        shape = spec.roi.shape / spec.voxel_size
        vectors = np.zeros((3, *shape), dtype=np.float32)
        mask = np.zeros(shape, dtype=np.float32)
        best = np.full(shape, np.inf)
        pre_graph = batch.graphs[self.pre_sites]
        posts, pres = [], []
        for node in batch.graphs[self.post_sites].nodes:
            partner = node.attrs.get("partner")
            if partner is None or not pre_graph.contains(partner):
                logger.debug("post site %s: pre site %s not available, no vectors", node.id, partner)
                continue
            posts.append(node.location)
            pres.append(np.asarray(pre_graph.node(partner).location, dtype=np.float64))
        for i, slices, in_ball, d2, pos in _site_balls(posts, spec.roi, spec.voxel_size,
                                                       batch.arrays[self.labels], self.radius):
            d2 = np.broadcast_to(d2, in_ball.shape)
            take = in_ball & (d2 < best[slices])
            best[slices][take] = d2[take]
            mask[slices][take] = 1.0
            for d in range(3):
                vectors[d][slices][take] = np.broadcast_to(pres[i][d] - pos[d], in_ball.shape)[take]
        out = gp.Batch()
        if self.vectors in request:
            out[self.vectors] = gp.Array(vectors, spec.copy()).crop(request[self.vectors].roi)
        if self.mask in request:
            out[self.mask] = gp.Array(mask, spec.copy()).crop(request[self.mask].roi)
        return out
