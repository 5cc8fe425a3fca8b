"""Synapses and their cubes: where the sites come from, the channels, and the SimCLR augmentations.

A synapse (:class:`Synapse`) is an int64 id, a centre and its two sides, all in nm, (z, y, x):

- from the transmitter store (``source = transmitter``): one document of ``<db>.synapses`` (Synister's
  layout: ``synapse_id``, ``x, y, z`` nm, ``skeleton_id``, ``prepost``).  Synister records one site per
  synapse; its neuron is the pre side (``prepost`` "pre" or absent) or the post side ("post").  The other
  side is not recorded: it is taken as the segment nearest (in nm) to the site among the other non-zero
  segments of the cube -- the neuron across the closest membrane, an approximation for polyadic synapses,
  where it picks one partner.  Labels: ``transmitter`` (the skeleton's one known transmitter), ``skeleton``.
- from a run's partner collection (``source = partners``): one partner (``id``, ``pre_*``, ``post_*`` nm,
  ``pre/post_seg_id``, ``score``); the cube is centred half-way between the sites, the masks are the
  recorded segment ids (looked up at the sites where missing).  Labels: ``score``, ``pre_segment``,
  ``post_segment``.

A cube is ``(channels, z, y, x)`` float32 of ``input_shape`` voxels centred on the synapse (offset snapped to
the voxel grid as gunpowder's SpecifiedLocation does): channel 0 raw in [-1, 1] (0 outside the volume reads
as -1), channel 1 the pre neuron mask, channel 2 the post neuron mask, channel 3 (with a cleft dataset)
the cleft mask; masks are exactly 0.0 or 1.0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ..errors import SynfulError

logger = logging.getLogger(__name__)

__all__ = ["EmbedDataError", "Synapse", "CubeReader", "transmitter_synapses", "partner_synapses", "augment", "random_crop",
           "allowed_rotation_planes", "RAW", "PRE", "POST", "CLEFT"]

#: channel indices of a cube
RAW, PRE, POST, CLEFT = 0, 1, 2, 3


class EmbedDataError(SynfulError):
    """Synapses or volumes for embeddings cannot be read (no synapses, voxel-size mismatch, ...)."""


@dataclass
class Synapse:
    """One synapse: int64 ``id``, ``centre`` and sides in nm (z, y, x); a side's ``*_site`` may be None
    (then its neuron is found next to the other side) and its ``*_seg`` None (then looked up at the site)."""

    id: int
    centre: tuple
    pre_site: tuple | None = None
    post_site: tuple | None = None
    pre_seg: int | None = None
    post_seg: int | None = None
    labels: dict = field(default_factory=dict)


def _site(z, y, x) -> tuple:
    return (int(round(z)), int(round(y)), int(round(x)))


def transmitter_synapses(store, database: str, *, split_name: str | None = None, part: str | None = None
                         ) -> list[Synapse]:
    """The synapses of ``<database>.synapses`` (all, or one ``part`` of split ``split_name``), by id, with
    labels ``transmitter`` (None without one known transmitter) and ``skeleton``."""
    from ..synthetic import TRANSMITTERS
    from ..transmitters.db import SKELETONS, SYNAPSES
    from ..transmitters.splits import read_split, synapse_labels

    docs = store.collection(database, SYNAPSES).find()
    if not docs:
        raise EmbedDataError(f"{store.url} {database}.{SYNAPSES}: no synapses (run `synful transmitter import` first)")
    if split_name is not None and part is not None:
        _, parts = read_split(store, database, split_name)
        docs = [d for d in docs if parts.get(d["synapse_id"]) == part]
        if not docs:
            raise EmbedDataError(f"{store.url} {database}: split {split_name!r} has no {part} synapses")
    skeletons = store.collection(database, SKELETONS).find()
    types = sorted({t for s in skeletons for t in (s.get("nt_known") or [])} | set(TRANSMITTERS))
    labels = synapse_labels(docs, skeletons, types)
    out = []
    for d in sorted(docs, key=lambda d: d["synapse_id"]):
        site = _site(d["z"], d["y"], d["x"])
        post = d.get("prepost") == "post"
        out.append(Synapse(int(d["synapse_id"]), site, pre_site=None if post else site, post_site=site if post else None,
                           labels={"transmitter": labels.get(d["synapse_id"]), "skeleton": d["skeleton_id"]}))
    return out


def partner_synapses(store, *, min_score: float = 0.0) -> list[Synapse]:
    """The partners of a partner :class:`synful.store.Store` with ``score >= min_score``, by id."""
    from ..io.partners import NO_ID

    out = []
    for batch in store.iter_batches():
        for p in batch:
            if float(p["score"]) < min_score:
                continue
            pre = _site(p["pre_z"], p["pre_y"], p["pre_x"])
            post = _site(p["post_z"], p["post_y"], p["post_x"])
            centre = tuple(int(round((a + b) / 2)) for a, b in zip(pre, post))
            pre_seg = None if int(p["pre_seg_id"]) == NO_ID else int(p["pre_seg_id"])
            post_seg = None if int(p["post_seg_id"]) == NO_ID else int(p["post_seg_id"])
            out.append(Synapse(int(p["id"]), centre, pre, post, pre_seg, post_seg,
                               labels={"score": float(p["score"]), "pre_segment": pre_seg, "post_segment": post_seg}))
    if not out:
        raise EmbedDataError(f"{store!r}: no partners with score >= {min_score}")
    return sorted(out, key=lambda s: s.id)


class CubeReader:
    """Reads ``(channels, z, y, x)`` float32 cubes of ``input_shape`` voxels from raw, segmentation and an
    optional cleft volume (funlib Arrays of equal voxel size ``voxel_size`` nm; checked, naming ``source``)."""

    def __init__(self, raw, seg, input_shape, voxel_size, *, cleft=None, source: str = "[EmbeddingTraining]"):
        for name, a in (("raw", raw), ("segmentation", seg), ("cleft", cleft)):
            if a is not None and tuple(a.voxel_size) != tuple(voxel_size):
                raise EmbedDataError(f"{source} voxel_size: {tuple(voxel_size)} nm, but the {name} volume has "
                                     f"voxel size {tuple(a.voxel_size)} nm")
        self.raw, self.seg, self.cleft = raw, seg, cleft
        self.input_shape = tuple(int(s) for s in input_shape)
        self.voxel_size = tuple(int(v) for v in voxel_size)

    @property
    def channels(self) -> int:
        return 3 if self.cleft is None else 4

    def _roi(self, centre):
        from funlib.geometry import Coordinate, Roi

        vs = Coordinate(self.voxel_size)
        size = Coordinate(self.input_shape) * vs
        begin = Coordinate(centre) - size / 2
        begin = Coordinate(int(v * round((b - o) / v)) + o for b, v, o in zip(begin, vs, self.raw.offset))
        return Roi(begin, size)

    def _side_id(self, seg: np.ndarray, roi, site, given) -> int:
        if given is not None:
            return int(given)
        if site is None:
            return 0
        idx = tuple((np.asarray(site) - np.asarray(roi.offset)) // np.asarray(self.voxel_size))
        if all(0 <= i < s for i, s in zip(idx, seg.shape)):
            return int(seg[idx])
        return 0

    def _nearest_other(self, seg: np.ndarray, roi, site, own: int) -> int:
        """The non-zero segment other than ``own`` nearest (nm) to ``site`` in the cube; 0 if none."""
        other = (seg != own) & (seg != 0)
        if site is None or not other.any():
            return 0
        vs = np.asarray(self.voxel_size, float)
        centres = [np.asarray(roi.offset)[a] + (np.arange(seg.shape[a]) + 0.5) * vs[a] - site[a] for a in range(3)]
        d2 = centres[0][:, None, None] ** 2 + centres[1][None, :, None] ** 2 + centres[2][None, None, :] ** 2
        d2 = np.where(other, d2, np.inf)
        return int(seg.flat[int(np.argmin(d2))])

    def read(self, synapse: Synapse) -> np.ndarray:
        """The cube of one synapse; see the module doc for the channels."""
        from ..models.unet import normalize_raw

        roi = self._roi(synapse.centre)
        out = np.zeros((self.channels, *self.input_shape), np.float32)
        out[RAW] = normalize_raw(self.raw.to_ndarray(roi, fill_value=0), uint8_only=False)
        seg = self.seg.to_ndarray(roi, fill_value=0)
        pre = self._side_id(seg, roi, synapse.pre_site, synapse.pre_seg)
        post = self._side_id(seg, roi, synapse.post_site, synapse.post_seg)
        if synapse.post_site is None and synapse.post_seg is None:
            post = self._nearest_other(seg, roi, synapse.pre_site, pre)
        elif synapse.pre_site is None and synapse.pre_seg is None:
            pre = self._nearest_other(seg, roi, synapse.post_site, post)
        if pre:
            out[PRE] = seg == pre
        if post:
            out[POST] = seg == post
        if self.cleft is not None:
            out[CLEFT] = self.cleft.to_ndarray(roi, fill_value=0) != 0
        return out

    def read_many(self, synapses, dtype=np.float32) -> np.ndarray:
        """``(n, channels, z, y, x)`` cubes of ``synapses``, in order."""
        out = np.empty((len(synapses), self.channels, *self.input_shape), dtype)
        for i, s in enumerate(synapses):
            out[i] = self.read(s)
        return out


def allowed_rotation_planes(voxel_size, input_shape) -> list[tuple[int, int]]:
    """Planes (pairs of spatial axes of a (z, y, x) cube) in which a 90-degree rotation keeps the cube's
    shape and its physical geometry: (y, x) when y and x have equal voxel size and extent; the planes with
    z only when all three voxel sizes (nm) and extents are equal.  With FAFB's 40 x 4 x 4 nm voxels: (y, x) only."""
    vs, sh = tuple(voxel_size), tuple(input_shape)
    planes = []
    if vs[1] == vs[2] and sh[1] == sh[2]:
        planes.append((1, 2))
    if vs[0] == vs[1] == vs[2] and sh[0] == sh[1] == sh[2]:
        planes += [(0, 1), (0, 2)]
    return planes


def random_crop(cube: np.ndarray, shape, rng: np.random.Generator) -> np.ndarray:
    """A ``(channels, *shape)`` window of a larger ``(channels, z, y, x)`` cube at a uniformly drawn offset
    (the same for every channel); the centre window when the sizes are equal."""
    offs = [int(rng.integers(c - s + 1)) for c, s in zip(cube.shape[1:], shape)]
    return cube[:, offs[0]:offs[0] + shape[0], offs[1]:offs[1] + shape[1], offs[2]:offs[2] + shape[2]]


def augment(cube: np.ndarray, rng: np.random.Generator, *, flip: bool = True, rotation_planes=((1, 2),),
            noise_sigma: float = 0.05, contrast: float = 0.2, brightness: float = 0.2) -> np.ndarray:
    """One random view of a ``(channels, z, y, x)`` cube (a new array; ``cube`` is not changed).

    The spatial transform (mirroring along each of z, y, x with probability 1/2, then a rotation by
    0-3 quarter turns in each allowed plane, see :func:`allowed_rotation_planes`) is the same for every
    channel; contrast ``a`` in [1 - contrast, 1 + contrast], brightness ``b`` in [-brightness, brightness]
    and Gaussian noise of a standard deviation drawn from [0, noise_sigma] change the raw channel only
    (``raw * a + b + noise``), so the masks stay exactly 0 / 1.
    """
    x = cube
    if flip:
        axes = tuple(1 + a for a in range(3) if rng.random() < 0.5)
        if axes:
            x = np.flip(x, axis=axes)
    for a, b in rotation_planes:
        k = int(rng.integers(4))
        if k:
            x = np.rot90(x, k, axes=(1 + a, 1 + b))
    x = np.array(x, dtype=np.float32, copy=True)
    a = rng.uniform(1 - contrast, 1 + contrast)
    b = rng.uniform(-brightness, brightness)
    sigma = rng.uniform(0, noise_sigma) if noise_sigma > 0 else 0.0
    x[RAW] = x[RAW] * a + b
    if sigma > 0:
        x[RAW] += rng.normal(0, sigma, x[RAW].shape).astype(np.float32)
    return x
