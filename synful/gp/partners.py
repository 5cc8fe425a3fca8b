"""Synaptic partners as two gunpowder graphs: pre-synaptic and post-synaptic sites."""

from __future__ import annotations

import logging

import gunpowder as gp
import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["PartnerSource"]


class PartnerSource(gp.BatchProvider):
    """Provides the pre- and post-synaptic sites of a partner list as two graphs.

    Partner ``i`` of ``partners`` becomes node ``i`` of ``pre_sites`` (at ``pre_z, pre_y, pre_x``)
    and node ``i`` of ``post_sites`` (at ``post_z, post_y, post_x``); every post node carries the
    attribute ``partner``, the id of its pre node.  A pre site shared by several partners appears
    once per partner.  Locations are float32 nm (z, y, x).  A request returns the nodes whose
    location lies inside the requested ROI; the graphs have no edges.

    Args:

        partners (``ndarray`` of :data:`~synful.io.partners.PARTNER_DTYPE`):

            The partners, locations in nm.

        pre_sites (:class:`gunpowder.GraphKey`):

            The graph of pre-synaptic sites to provide.

        post_sites (:class:`gunpowder.GraphKey`):

            The graph of post-synaptic sites to provide.

        roi (:class:`gunpowder.Roi`, optional):

            The ROI (nm) announced for both graphs; default: unbounded.
    """

    def __init__(self, partners, pre_sites, post_sites, roi=None):
        partners = np.asarray(partners)
        self.pre_sites = pre_sites
        self.post_sites = post_sites
        self.roi = roi
        self.pre_locations = np.stack([partners["pre_z"], partners["pre_y"], partners["pre_x"]], axis=1) \
            .astype(np.float32).reshape(-1, 3)
        self.post_locations = np.stack([partners["post_z"], partners["post_y"], partners["post_x"]], axis=1) \
            .astype(np.float32).reshape(-1, 3)

    def setup(self):
        roi = self.roi if self.roi is not None else gp.Roi((None,) * 3, (None,) * 3)
        self.provides(self.pre_sites, gp.GraphSpec(roi=roi, directed=False))
        self.provides(self.post_sites, gp.GraphSpec(roi=roi, directed=False))

    def provide(self, request):
        batch = gp.Batch()
        for key, locations in ((self.pre_sites, self.pre_locations), (self.post_sites, self.post_locations)):
            if key not in request:
                continue
            roi = request[key].roi
            inside = np.array([roi.contains(loc) for loc in locations], dtype=bool)
            nodes = []
            for i in np.flatnonzero(inside):
                attrs = {"partner": int(i)} if key == self.post_sites else {}
                nodes.append(gp.Node(int(i), location=locations[i].copy(), attrs=attrs))
            spec = self.spec[key].copy()
            spec.roi = roi
            batch.graphs[key] = gp.Graph(nodes, [], spec)
        return batch
