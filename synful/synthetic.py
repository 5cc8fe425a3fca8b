"""Synthetic EM volumes of fly neuropil with ground-truth synaptic partners.

:func:`generate` builds, deterministically for a seed, a CREMI-like
anisotropic volume (default voxel size 40 x 4 x 4 nm, (z, y, x)):

- **neurons**: a space-filling uint64 label volume of irregular neurites.
  Smooth random walks through the volume (some branching off others and
  keeping their id) are the neurite centre lines; every voxel belongs to the
  nearest centre line (a Voronoi tessellation, computed with one distance
  transform), and a smooth random displacement bends the boundaries.  With
  the default ``neurite_spacing_nm=500`` neurites are ~200-1000 nm across.
- **raw** (uint8): per-neuron cytoplasm brightness, texture, dark membranes
  (2 voxels = 8 nm in the section plane), mitochondria (ellipsoids with a
  dark double membrane and cristae), blur across z and in plane, per-section
  brightness jitter and pixel noise.
- **synapses**, fly-like and polyadic: a presynaptic site sits 30-80 nm
  inside a neuron next to a membrane, with a dark T-bar (pedestal towards the
  membrane, platform at the site) and a vesicle cloud behind it; 1 to 5
  postsynaptic partners lie 30-120 nm inside *different* neighbouring neurons,
  110-320 nm from the presynaptic site, each under a dark postsynaptic density
  (PSD) along the membrane facing the T-bar and a darker synaptic cleft.
- **neurotransmitters**: every T-bar gets one of :data:`TRANSMITTERS`; the
  class sets vesicle size, vesicle count, the fraction of dense-core
  vesicles, vesicle cloud size and PSD / cleft darkness (:data:`STYLES`), so
  a classifier can learn it from the image.

Locations are voxel centres in world nm (``offset + index * voxel_size +
voxel_size // 2``).  :func:`write_synthetic` writes the CREMI container
layout (zarr v2) atomically; :func:`show` draws a few sections with the
ground-truth sites as PNG.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from funlib.geometry import Coordinate, Roi
from scipy import ndimage as ndi

from .errors import SynfulError
from .io.partners import empty_partners

__all__ = [
    "TRANSMITTERS",
    "STYLES",
    "TransmitterStyle",
    "SyntheticVolume",
    "GENERATOR_VERSION",
    "generate",
    "write_synthetic",
    "read_synthetic_params",
    "show",
]

logger = logging.getLogger(__name__)

# Bump when the output of generate() changes for the same parameters: invalidates reused containers.
GENERATOR_VERSION = 1

TRANSMITTERS = ("gaba", "acetylcholine", "glutamate", "serotonin", "octopamine", "dopamine")


@dataclass(frozen=True)
class TransmitterStyle:
    """How a T-bar of one neurotransmitter class looks (nm; darkness in raw grey values)."""

    vesicle_radius_nm: float
    vesicles: int
    dense_core: float  # fraction of vesicles with a dark core
    cloud_radius_nm: float
    psd_darkness: float
    cleft_darkness: float


STYLES = {
    "gaba": TransmitterStyle(16, 70, 0.0, 140, 55, 25),
    "acetylcholine": TransmitterStyle(20, 100, 0.0, 160, 85, 35),
    "glutamate": TransmitterStyle(14, 130, 0.0, 150, 70, 55),
    "serotonin": TransmitterStyle(25, 50, 0.8, 170, 70, 25),
    "octopamine": TransmitterStyle(30, 40, 0.5, 180, 60, 40),
    "dopamine": TransmitterStyle(22, 80, 0.3, 165, 95, 20),
}

TBAR_DTYPE = np.dtype([("id", np.int64), ("z", np.int64), ("y", np.int64), ("x", np.int64),
                       ("seg_id", np.int64), ("transmitter", "U16"), ("num_partners", np.int64)])

# synapse geometry, nm
_PRE_DEPTH = (30.0, 80.0)
_POST_DEPTH = (30.0, 120.0)
_PARTNER_DIST = (110.0, 320.0)
_TBAR_SPACING = 450.0
_PARTNER_COUNT_P = (0.15, 0.25, 0.3, 0.2, 0.1)  # 1..5 postsynaptic partners
_PSD_RADIUS = 110.0
_PSD_DEPTH = 35.0
_WIGGLE = 0.07  # direction change per 20 nm step of a neurite centre line (radians, std)


@dataclass
class SyntheticVolume:
    """A generated volume; arrays are (z, y, x), locations nm in world coordinates.

    ``partners``: PARTNER_DTYPE, ``id`` = row index, ``score`` 1.0, seg ids
    filled, skeleton ids NO_ID; partners of one T-bar share its pre location
    and are consecutive.  ``transmitters``: str per partner row (its T-bar's
    class).  ``tbars``: one record per presynaptic site (:data:`TBAR_DTYPE`).
    """

    raw: np.ndarray
    labels: np.ndarray
    partners: np.ndarray
    transmitters: np.ndarray
    tbars: np.ndarray
    voxel_size: Coordinate
    offset: Coordinate

    @property
    def roi(self) -> Roi:
        """The volume's ROI in nm."""
        return Roi(self.offset, Coordinate(self.raw.shape) * self.voxel_size)


def _check_shape(shape, voxel_size):
    shape = tuple(int(s) for s in shape)
    vs = tuple(int(v) for v in voxel_size)
    if len(shape) != 3 or len(vs) != 3:
        raise SynfulError(f"synthetic: shape {shape} and voxel size {vs} must be (z, y, x)")
    if any(v <= 0 for v in vs):
        raise SynfulError(f"synthetic: voxel size {vs} must be positive")
    if min(shape) < 1 or shape[1] < 16 or shape[2] < 16:
        raise SynfulError(f"synthetic: shape {shape} too small (need z >= 1, y and x >= 16 voxels)")
    return shape, vs


def _unit(v):
    n = np.linalg.norm(v)
    return v / n if n > 0 else np.array([0.0, 0.0, 1.0])


def _random_direction(rng):
    return _unit(rng.standard_normal(3))


def _walk(start, direction, lo, hi, step, persistence_sigma, max_steps, rng):
    """Points (nm) of a smooth random walk from ``start`` until it leaves the box [lo, hi)."""
    pts = [start]
    p, d = start.copy(), direction.copy()
    noise = rng.standard_normal((max_steps, 3)) * persistence_sigma
    for k in range(max_steps):
        d = _unit(d + noise[k])
        p = p + d * step
        if np.any(p < lo) or np.any(p >= hi):
            break
        pts.append(p)
    return pts


def _smooth_field(shape, factor, sigma, rng):
    """Float32 noise of ``shape`` with ~unit std, smooth over ``sigma`` low-res cells of ``factor`` voxels.

    Drawn on a grid ``factor`` times coarser per axis, upsampled linearly to
    at most 4 voxels per cell in y and x, then repeated (the field varies
    slowly, so the 4-voxel steps are far below the noise).
    """
    low_shape = tuple(int(math.ceil(s / f)) + 2 for s, f in zip(shape, factor))
    low = ndi.gaussian_filter(rng.standard_normal(low_shape).astype(np.float32), sigma, mode="wrap")
    low /= max(float(low.std()), 1e-6)
    rep = [1] + [max(1, min(4, f)) for f in factor[1:]]
    zoom = [f / r for f, r in zip(factor, rep)]
    up = ndi.zoom(low, zoom, order=1, mode="nearest", grid_mode=False)
    part = tuple(int(math.ceil(s / r)) for s, r in zip(shape, rep))
    up = up[tuple(slice(0, p) for p in part)]
    for ax in (1, 2):
        if rep[ax] > 1:
            up = np.repeat(up, rep[ax], axis=ax)
    return np.ascontiguousarray(up[tuple(slice(0, s) for s in shape)], dtype=np.float32)


def _neurons(shape, vs, rng, spacing_nm):
    """Label-index volume (int32, 0..n-1) of Voronoi cells around random neurite centre lines."""
    vs = np.asarray(vs, float)
    extent = np.asarray(shape) * vs
    # tessellate on a grid coarser in y, x (distance transform cost), then upsample with displacement
    f = np.array([1, max(1, int(8 // vs[1])), max(1, int(8 // vs[2]))])
    cshape = tuple(int(math.ceil(s / k)) for s, k in zip(shape, f))
    cvs = vs * f
    margin = spacing_nm
    lo, hi = -margin * np.ones(3), extent + margin
    step = min(20.0, float(vs.min()) * 0.5 + 10.0)
    target = float(np.prod(extent)) / spacing_nm ** 2  # total centre-line length inside the volume
    max_steps = int(4 * np.linalg.norm(hi - lo) / step) + 10
    seeds = np.zeros(cshape, np.int32)  # label index + 1, 0 = none
    curves: list[tuple[np.ndarray, int]] = []
    total, n_labels = 0.0, 0
    while total < target or not curves:
        if curves and rng.random() < 0.3:  # branch off an existing neurite, keep its label
            pts, lab = curves[rng.integers(len(curves))]
            start = pts[rng.integers(len(pts))]
            halves = [_walk(start, _random_direction(rng), lo, hi, step, _WIGGLE, max_steps, rng)]
        else:
            start = rng.random(3) * extent if curves else extent / 2
            d = _random_direction(rng)
            lab = n_labels
            n_labels += 1
            halves = [_walk(start, d, lo, hi, step, _WIGGLE, max_steps, rng),
                      _walk(start, -d, lo, hi, step, _WIGGLE, max_steps, rng)]
        pts = np.concatenate([np.asarray(h) for h in halves])
        curves.append((pts, lab))
        idx = np.floor(pts / cvs).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < cshape), axis=1)
        total += inside.sum() * step
        i = idx[inside]
        seeds[i[:, 0], i[:, 1], i[:, 2]] = lab + 1
    _, nearest = ndi.distance_transform_edt(seeds == 0, sampling=cvs, return_indices=True)
    coarse = seeds[tuple(nearest)] - 1
    del nearest
    # compact label indices to those present
    present = np.flatnonzero(np.bincount(coarse.ravel(), minlength=n_labels))
    remap = np.zeros(n_labels, np.int32)
    remap[present] = np.arange(len(present), dtype=np.int32)
    coarse = remap[coarse]
    # bend the boundaries: look up the coarse labels at smoothly displaced in-plane positions
    corr = 300.0  # nm, displacement correlation length
    amp = 0.12 * spacing_nm  # nm, displacement std
    dfac = (max(1, int(round(corr / 2 / vs[0]))), max(1, int(round(corr / 2 / vs[1]))),
            max(1, int(round(corr / 2 / vs[2]))))
    dy = _smooth_field(shape, dfac, 1.0, rng) * (amp / vs[1])
    dx = _smooth_field(shape, dfac, 1.0, rng) * (amp / vs[2])
    yy = np.arange(shape[1], dtype=np.float32)[None, :, None]
    xx = np.arange(shape[2], dtype=np.float32)[None, None, :]
    yi = np.clip(((yy + dy) / f[1]).astype(np.int32), 0, cshape[1] - 1)
    xi = np.clip(((xx + dx) / f[2]).astype(np.int32), 0, cshape[2] - 1)
    zi = np.arange(shape[0])[:, None, None]
    return coarse[zi, yi, xi], len(present)


def _membranes(lab):
    """(in-plane membrane mask, 2 voxels thick; 3D boundary mask incl. z changes)."""
    mem = np.zeros(lab.shape, bool)
    dy = lab[:, 1:, :] != lab[:, :-1, :]
    mem[:, 1:, :] |= dy
    mem[:, :-1, :] |= dy
    dx = lab[:, :, 1:] != lab[:, :, :-1]
    mem[:, :, 1:] |= dx
    mem[:, :, :-1] |= dx
    bnd = mem.copy()
    dz = lab[1:] != lab[:-1]
    bnd[1:] |= dz
    bnd[:-1] |= dz
    return mem, bnd


def _depth(bnd, vs):
    """Distance (nm, float32) of every voxel to the nearest boundary voxel, on an ~8 nm in-plane grid.

    Coarse in y, x for speed: boundaries are pooled (any) over f x f blocks,
    so depths are underestimated by at most one coarse voxel.
    """
    f = [1, max(1, int(8 // vs[1])), max(1, int(8 // vs[2]))]
    shape = bnd.shape
    if f[1] == 1 and f[2] == 1:
        return ndi.distance_transform_edt(~bnd, sampling=vs).astype(np.float32)
    pad = [(0, 0)] + [(0, (-s) % k) for s, k in zip(shape[1:], f[1:])]
    b = np.pad(bnd, pad, mode="edge")
    b = b.reshape(b.shape[0], b.shape[1] // f[1], f[1], b.shape[2] // f[2], f[2]).any(axis=(2, 4))
    d = ndi.distance_transform_edt(~b, sampling=np.asarray(vs) * f).astype(np.float32)
    d = np.repeat(np.repeat(d, f[1], axis=1), f[2], axis=2)
    return np.ascontiguousarray(d[:, :shape[1], :shape[2]])


def _crop(center_idx, radius_nm, vs, shape):
    r = [int(math.ceil(radius_nm / v)) for v in vs]
    lo = [max(0, c - k) for c, k in zip(center_idx, r)]
    hi = [min(s, c + k + 1) for c, k, s in zip(center_idx, r, shape)]
    return tuple(slice(a, b) for a, b in zip(lo, hi)), np.asarray(lo)


def _rel_coords(sl, lo, p_nm, vs):
    """Broadcastable nm coordinates (z, y, x) of a crop's voxel centres relative to ``p_nm``."""
    out = []
    for ax in range(3):
        n = sl[ax].stop - sl[ax].start
        c = (lo[ax] + np.arange(n)) * vs[ax] + vs[ax] / 2 - p_nm[ax]
        shape = [1, 1, 1]
        shape[ax] = n
        out.append(c.reshape(shape).astype(np.float32))
    return out


def _place_synapses(lab, depth, vs, rng, density, probs):
    """Choose T-bars and their partners; returns a list of dicts (voxel indices, contact points)."""
    shape = lab.shape
    vs = np.asarray(vs, float)
    volume_um3 = float(np.prod(np.asarray(shape) * vs)) / 1e9
    n_target = int(rng.poisson(density * volume_um3)) if density > 0 else 0
    n_target = max(n_target, 1 if density > 0 else 0)
    if n_target == 0:
        return []
    band = np.flatnonzero((depth >= _PRE_DEPTH[0]) & (depth <= _PRE_DEPTH[1]))
    if len(band) == 0:
        return []
    tries = rng.integers(0, len(band), size=min(len(band), 40 * n_target + 50))
    synapses: list[dict] = []
    tbar_nm = np.zeros((0, 3))
    radius = _PARTNER_DIST[1] + 10
    for flat in band[tries]:
        if len(synapses) >= n_target:
            break
        p_idx = np.array(np.unravel_index(flat, shape))
        p_nm = p_idx * vs + vs / 2
        if len(tbar_nm) and np.min(np.linalg.norm(tbar_nm - p_nm, axis=1)) < _TBAR_SPACING:
            continue
        a = lab[tuple(p_idx)]
        sl, lo = _crop(p_idx, radius, vs, shape)
        cl, cd = lab[sl], depth[sl]
        rz, ry, rx = _rel_coords(sl, lo, p_nm, vs)
        dist = np.sqrt(rz * rz + ry * ry + rx * rx)
        ok = (cl != a) & (cd >= _POST_DEPTH[0]) & (cd <= _POST_DEPTH[1]) & \
             (dist >= _PARTNER_DIST[0]) & (dist <= _PARTNER_DIST[1])
        cand = np.flatnonzero(ok)
        if len(cand) == 0:
            continue
        # per neighbouring neuron its nearest candidate voxel, neurons ordered by that distance
        dist = dist.ravel()  # the crop's full shape: rz, ry, rx broadcast over all three axes
        order = np.argsort(dist[cand], kind="stable")
        _, first = np.unique(cl.ravel()[cand][order], return_index=True)
        nearest = cand[order[first]]
        nearest = nearest[np.argsort(dist[nearest], kind="stable")]
        k = int(rng.choice(len(_PARTNER_COUNT_P), p=_PARTNER_COUNT_P)) + 1
        posts, contacts = [], []
        for flat_q in nearest:
            if len(posts) >= k:
                break
            q_idx = np.array(np.unravel_index(flat_q, cl.shape)) + lo
            b = lab[tuple(q_idx)]
            q_nm = q_idx * vs + vs / 2
            # the straight line from pre to post must pass through the pre and post neurons only
            ts = np.linspace(0, 1, 24)[:, None]
            line = np.floor((p_nm + ts * (q_nm - p_nm)) / vs).astype(np.int64)
            line_lab = lab[line[:, 0], line[:, 1], line[:, 2]]
            if not np.all((line_lab == a) | (line_lab == b)):
                continue
            entry = int(np.argmax(line_lab == b))
            posts.append(q_idx)
            contacts.append(p_nm + float(ts[entry, 0]) * (q_nm - p_nm))
        if not posts:
            continue
        nt = TRANSMITTERS[int(rng.choice(len(TRANSMITTERS), p=probs))]
        synapses.append({"pre": p_idx, "posts": posts, "contacts": contacts, "transmitter": nt})
        tbar_nm = np.vstack([tbar_nm, p_nm])
    return synapses


def _render_synapse(syn, lab, depth, mem, dark, vs, rng):
    """Add T-bar, vesicle cloud, PSDs and cleft darkness of one synapse to ``dark`` (in place)."""
    style = STYLES[syn["transmitter"]]
    shape = lab.shape
    p_idx = syn["pre"]
    p_nm = p_idx * vs + vs / 2
    a = lab[tuple(p_idx)]
    contacts = np.asarray(syn["contacts"])
    u = _unit(np.mean(contacts - p_nm, axis=0))
    if np.linalg.norm(np.mean(contacts - p_nm, axis=0)) < 20:
        u = _unit(contacts[0] - p_nm)
    membrane_dist = float(np.min(np.linalg.norm(contacts - p_nm, axis=1)))
    # T-bar: platform at the site, pedestal towards the membrane
    half = max(membrane_dist / 2, 15.0)
    sl, lo = _crop(p_idx, membrane_dist + 60, vs, shape)
    rz, ry, rx = _rel_coords(sl, lo, p_nm, vs)
    t = rz * u[0] + ry * u[1] + rx * u[2]
    perp2 = np.maximum(rz * rz + ry * ry + rx * rx - t * t, 0)
    platform = np.exp(-0.5 * (t / 14.0) ** 2 - 0.5 * perp2 / 45.0 ** 2)
    pedestal = np.exp(-0.5 * ((t - half) / half) ** 4 - 0.5 * perp2 / 18.0 ** 2)
    dark[sl] += 105.0 * np.maximum(platform, pedestal) * (lab[sl] == a)
    # PSD and cleft at each contact
    for q_idx, c in zip(syn["posts"], syn["contacts"]):
        b = lab[tuple(q_idx)]
        c_idx = np.floor(c / vs).astype(np.int64)
        sl, lo = _crop(c_idx, 1.5 * _PSD_RADIUS, vs, shape)
        cl = lab[sl]
        cz, cy, cx = _rel_coords(sl, lo, c, vs)
        fall = np.exp(-0.5 * ((cz * cz + cy * cy + cx * cx) / _PSD_RADIUS ** 2) ** 2)
        in_b = ndi.distance_transform_edt(cl == b, sampling=vs)  # exact depth inside the post neuron
        dark[sl] += style.psd_darkness * fall * ((cl == b) & (in_b <= _PSD_DEPTH))
        dark[sl] += style.cleft_darkness * fall * (mem[sl] & ((cl == a) | (cl == b)))
    # vesicle cloud behind the T-bar, inside the presynaptic neuron
    rv = style.vesicle_radius_nm
    centre = p_nm - u * style.cloud_radius_nm * 0.6
    n_try = style.vesicles * 4
    offsets = rng.standard_normal((n_try, 3))
    offsets /= np.linalg.norm(offsets, axis=1, keepdims=True)
    offsets *= style.cloud_radius_nm * rng.random((n_try, 1)) ** (1 / 3)
    cands = centre + offsets
    placed: list[np.ndarray] = []
    dense = rng.random(n_try) < style.dense_core
    jitter = rng.uniform(0.85, 1.15, n_try)
    vy = int(math.ceil((rv * 1.2 + 6) / vs[1]))
    vx = int(math.ceil((rv * 1.2 + 6) / vs[2]))
    for k, c in enumerate(cands):
        if len(placed) >= style.vesicles:
            break
        ci = np.floor(c / vs).astype(np.int64)
        if np.any(ci < 0) or np.any(ci >= shape):
            continue
        if lab[tuple(ci)] != a or depth[tuple(ci)] < rv + 6 or np.linalg.norm(c - p_nm) < 50:
            continue
        if placed and np.min(np.linalg.norm(np.asarray(placed) - c, axis=1)) < 2.1 * rv:
            continue
        placed.append(c)
        r = rv * jitter[k]
        y0, y1 = max(0, ci[1] - vy), min(shape[1], ci[1] + vy + 1)
        x0, x1 = max(0, ci[2] - vx), min(shape[2], ci[2] + vx + 1)
        yy = (np.arange(y0, y1) * vs[1] + vs[1] / 2 - c[1])[:, None]
        xx = (np.arange(x0, x1) * vs[2] + vs[2] / 2 - c[2])[None, :]
        d = np.sqrt(yy * yy + xx * xx)
        # a section shows the vesicle's largest cross-section within its thickness
        for z in range(max(0, int((c[0] - r) // vs[0])), min(shape[0], int((c[0] + r) // vs[0]) + 1)):
            z0, z1 = z * vs[0], (z + 1) * vs[0]
            dz = 0.0 if z0 <= c[0] < z1 else min(abs(c[0] - z0), abs(c[0] - z1))
            rs = math.sqrt(max(r * r - dz * dz, 0.0))
            if rs < 0.4 * r:
                continue
            ring = np.exp(-0.5 * ((d - rs) / 3.5) ** 2)
            patch = 75.0 * ring - 12.0 * (d < rs - 3)
            if dense[k]:
                patch += 85.0 * np.exp(-0.5 * (d / (0.45 * rs)) ** 2)
            dark[z, y0:y1, x0:x1] += patch * (lab[z, y0:y1, x0:x1] == a)


def _render_mitochondria(lab, depth, dark, vs, rng, density, avoid_nm):
    """Add mitochondria (dark double membrane, cristae) to ``dark``; avoid synapse sites."""
    shape = lab.shape
    volume_um3 = float(np.prod(np.asarray(shape) * vs)) / 1e9
    n = int(rng.poisson(density * volume_um3))
    deep = np.flatnonzero(depth >= 100)
    if n == 0 or len(deep) == 0:
        return
    picks = deep[rng.integers(0, len(deep), size=4 * n)]
    done = 0
    for flat in picks:
        if done >= n:
            break
        c_idx = np.array(np.unravel_index(flat, shape))
        c = c_idx * vs + vs / 2
        if len(avoid_nm) and np.min(np.linalg.norm(avoid_nm - c, axis=1)) < 400:
            continue
        m = lab[tuple(c_idx)]
        v = _random_direction(rng)
        a_len = rng.uniform(120, 300)
        b_len = rng.uniform(60, 110)
        sl, lo = _crop(c_idx, a_len + 10, vs, shape)
        rz, ry, rx = _rel_coords(sl, lo, c, vs)
        t = rz * v[0] + ry * v[1] + rx * v[2]
        perp2 = np.maximum(rz * rz + ry * ry + rx * rx - t * t, 0)
        q = (t / a_len) ** 2 + perp2 / b_len ** 2
        inside = (q < 1) & (lab[sl] == m)
        rim = inside & (q > 0.72)
        cristae = inside & (np.sin(2 * np.pi * t / 45.0) > 0.55)
        dark[sl] += 30.0 * inside + 55.0 * rim + 25.0 * cristae
        avoid_nm = np.vstack([avoid_nm, c]) if len(avoid_nm) else c[None]
        done += 1


def generate(shape, *, seed: int = 0, voxel_size=(40, 4, 4), offset=(0, 0, 0), neurite_spacing_nm: float = 350.0,
             synapse_density: float = 3.0, mito_density: float = 0.5, noise_sigma: float = 7.0,
             transmitter_probs=None) -> SyntheticVolume:
    """Generate a synthetic EM volume of ``shape`` voxels (z, y, x); deterministic for ``seed``.

    ``voxel_size`` and ``offset`` are nm (z, y, x).  ``neurite_spacing_nm``
    sets the mean distance between neurite centre lines (~ their diameter);
    ``synapse_density`` and ``mito_density`` are expected T-bars and
    mitochondria per um^3 (at least one T-bar is placed when the volume has
    room for one); ``noise_sigma`` is the pixel noise in grey values;
    ``transmitter_probs`` the class frequencies (default uniform over
    :data:`TRANSMITTERS`).  A 40 x 400 x 400 volume takes a few seconds.
    """
    shape, vs_t = _check_shape(shape, voxel_size)
    offset = tuple(int(o) for o in offset)
    if len(offset) != 3:
        raise SynfulError(f"synthetic: offset {offset} must be (z, y, x) nm")
    if neurite_spacing_nm <= 0 or synapse_density < 0 or mito_density < 0 or noise_sigma < 0:
        raise SynfulError("synthetic: neurite spacing must be > 0, densities and noise >= 0")
    probs = np.full(len(TRANSMITTERS), 1 / len(TRANSMITTERS)) if transmitter_probs is None \
        else np.asarray(transmitter_probs, float)
    if probs.shape != (len(TRANSMITTERS),) or np.any(probs < 0) or probs.sum() <= 0:
        raise SynfulError(f"synthetic: transmitter_probs needs {len(TRANSMITTERS)} non-negative weights")
    probs = probs / probs.sum()
    rng = np.random.default_rng(seed)
    vs = np.asarray(vs_t, float)

    lab, n_labels = _neurons(shape, vs, rng, float(neurite_spacing_nm))
    mem, bnd = _membranes(lab)
    depth = _depth(bnd, vs)
    del bnd
    synapses = _place_synapses(lab, depth, vs, rng, synapse_density, probs)

    # raw: cytoplasm brightness per neuron, texture, membranes, structures, blur, noise
    brightness = rng.uniform(168, 200, n_labels).astype(np.float32)
    raw = brightness[lab]
    raw += 9.0 * _smooth_field(shape, (1, max(1, int(60 // vs[1])), max(1, int(60 // vs[2]))), 1.0, rng)
    raw += 16.0 * rng.standard_normal(shape, dtype=np.float32)
    dark = np.zeros(shape, np.float32)
    dark += 105.0 * mem
    for syn in synapses:
        _render_synapse(syn, lab, depth, mem, dark, vs, rng)
    sites = [s["pre"] * vs + vs / 2 for s in synapses] + \
        [q * vs + vs / 2 for s in synapses for q in s["posts"]]
    _render_mitochondria(lab, depth, dark, vs, rng, mito_density, np.asarray(sites).reshape(-1, 3))
    raw -= dark
    del dark
    raw = ndi.gaussian_filter(raw, (0.45 * 40 / max(vs[0], 1), 0.8 * 4 / vs[1], 0.8 * 4 / vs[2]))
    raw += rng.normal(0, 4, (shape[0], 1, 1)).astype(np.float32)  # section-to-section brightness
    raw += noise_sigma * rng.standard_normal(shape, dtype=np.float32)
    raw = np.clip(np.rint(raw), 0, 255).astype(np.uint8)

    ids = (rng.permutation(n_labels) + 1).astype(np.uint64)
    labels = ids[lab]

    off = np.asarray(offset, np.int64)
    half = np.asarray(vs_t, np.int64) // 2
    vsi = np.asarray(vs_t, np.int64)
    n_partners = sum(len(s["posts"]) for s in synapses)
    partners = empty_partners(n_partners)
    tbars = np.zeros(len(synapses), TBAR_DTYPE)
    transmitters = []
    r = 0
    for k, s in enumerate(synapses):
        pre = off + s["pre"] * vsi + half
        tbars[k] = (k, *pre, int(labels[tuple(s["pre"])]), s["transmitter"], len(s["posts"]))
        for q in s["posts"]:
            post = off + q * vsi + half
            partners[r]["id"] = r
            partners[r]["pre_z"], partners[r]["pre_y"], partners[r]["pre_x"] = pre
            partners[r]["post_z"], partners[r]["post_y"], partners[r]["post_x"] = post
            partners[r]["score"] = 1.0
            partners[r]["pre_seg_id"] = int(labels[tuple(s["pre"])])
            partners[r]["post_seg_id"] = int(labels[tuple(q)])
            transmitters.append(s["transmitter"])
            r += 1
    return SyntheticVolume(raw=raw, labels=labels, partners=partners,
                           transmitters=np.array(transmitters, dtype=object), tbars=tbars,
                           voxel_size=Coordinate(vs_t), offset=Coordinate(offset))


# writing and drawing live in synthetic_io (which imports generate from here when called)
from .synthetic_io import read_synthetic_params, show, write_synthetic  # noqa: E402
