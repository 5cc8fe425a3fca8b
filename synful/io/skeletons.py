"""Neuron skeletons from files (SWC, and the node-list JSON of funkelab/synful_fafb), and geodesic distances.

A skeleton is a forest of nodes, each with a position (nm, (z, y, x)) and an
optional parent.  Two file formats are read:

- SWC: one node per line, ``id type x y z radius parent`` (``parent`` -1 for a
  root; ``#`` starts a comment).  Coordinates are taken as nm and reordered to
  (z, y, x).
- JSON node list (``evaluation/data/gt_skeletons/*.json`` of synful_fafb): a
  list of objects ``{"id", "position": [z, y, x], "parent_id", "neuron_id"}``;
  a file may hold several neurons, told apart by ``neuron_id`` (the skeleton id).

A parent that is not in the file is ignored (the node becomes a root), so a
cropped skeleton reads as several pieces; distances between pieces are
infinite.

:func:`load_skeleton` finds the skeleton of one id in a *source*: a folder of
``<skeleton_id>.swc`` / ``<skeleton_id>.json`` files, or one JSON node-list
file.  :func:`geodesic_distances` gives path lengths along a skeleton between
the nodes nearest to given points.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra
from scipy.spatial import cKDTree

from ..errors import SynfulError, read_json_file, read_text_file

__all__ = ["Skeleton", "SkeletonError", "read_swc", "read_skeleton_json", "load_skeleton", "geodesic_distances"]


class SkeletonError(SynfulError):
    """A skeleton file is missing or invalid; the message names the file (and line or node)."""


class Skeleton(NamedTuple):
    """Nodes of one skeleton: ``ids`` (n,) int64, ``positions`` (n, 3) float64 nm (z, y, x),
    ``parents`` (n,) int64 row index of each node's parent, -1 for none."""

    ids: np.ndarray
    positions: np.ndarray
    parents: np.ndarray


def _build(ids, positions, parent_ids, where: str) -> Skeleton:
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    if len(ids) == 0:
        raise SkeletonError(f"{where}: no skeleton nodes")
    if not np.isfinite(positions).all():
        raise SkeletonError(f"{where}: a node position is not a finite number")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise SkeletonError(f"{where}: node id {int(uniq[counts > 1][0])} is repeated")
    row = {int(n): i for i, n in enumerate(ids)}
    parents = np.array([row.get(int(p), -1) if p is not None else -1 for p in parent_ids], dtype=np.int64)
    return Skeleton(ids, positions, parents)


def read_swc(path) -> Skeleton:
    """Read an SWC file (``id type x y z radius parent``; x, y, z in nm) into a :class:`Skeleton`."""
    path = Path(path)
    lines = read_text_file(path, "skeleton file", SkeletonError).splitlines()
    ids, pos, parents = [], [], []
    for n, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].split()
        if not text:
            continue
        if len(text) < 7:
            raise SkeletonError(f"{path}:{n}: expected 'id type x y z radius parent', got {line.strip()!r}")
        try:
            ids.append(int(text[0]))
            x, y, z = (float(v) for v in text[2:5])
            parents.append(int(text[6]))
        except ValueError:
            raise SkeletonError(f"{path}:{n}: expected 'id type x y z radius parent', got {line.strip()!r}") from None
        pos.append((z, y, x))
    return _build(ids, pos, parents, str(path))


def _read_node_list(path: Path) -> list:
    data = read_json_file(path, "skeleton file", SkeletonError)
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        data = data["nodes"]
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise SkeletonError(f"{path}: expected a JSON list of skeleton nodes "
                            f"({{\"id\", \"position\": [z, y, x], \"parent_id\", \"neuron_id\"}})")
    return data


def _from_nodes(nodes: list, where: str) -> Skeleton:
    ids, pos, parents = [], [], []
    for k, d in enumerate(nodes):
        try:
            ids.append(int(d["id"]))
            p = [float(v) for v in d["position"]]
            if len(p) != 3:
                raise ValueError
            pos.append(p)
            parents.append(None if d.get("parent_id") is None else int(d["parent_id"]))
        except (KeyError, TypeError, ValueError):
            raise SkeletonError(f"{where}: node {k}: expected id, position [z, y, x] and parent_id, "
                                f"got {json.dumps(d)[:120]}") from None
    return _build(ids, pos, parents, where)


def read_skeleton_json(path, skeleton_id: int | None = None) -> Skeleton:
    """Read a JSON node list (synful_fafb ``gt_skeletons`` format; positions (z, y, x) nm).

    With ``skeleton_id``, only the nodes whose ``neuron_id`` equals it (nodes
    without ``neuron_id`` are all taken); none found raises :class:`SkeletonError`.
    """
    path = Path(path)
    nodes = _read_node_list(path)
    if skeleton_id is not None:
        nodes = [d for d in nodes if d.get("neuron_id") is None or _same(d.get("neuron_id"), skeleton_id)]
        if not nodes:
            raise SkeletonError(f"{path}: no nodes of skeleton {skeleton_id} (neuron_id)")
    return _from_nodes(nodes, str(path))


def _same(a, b) -> bool:
    try:
        return int(a) == int(b)
    except (TypeError, ValueError):
        return False


def load_skeleton(source, skeleton_id: int, key: str = "skeletons") -> Skeleton:
    """The skeleton ``skeleton_id`` from ``source``: a folder holding ``<id>.swc`` or ``<id>.json``,
    or one JSON node-list file.  ``key`` names the setting in error messages."""
    if source is None:
        raise SkeletonError(f"{key}: not set; geodesic distances need skeleton files "
                            f"(a folder of <skeleton_id>.swc / .json files, or one JSON node list)")
    src = Path(os.path.expanduser(str(source)))
    if src.is_dir():
        for suffix, reader in ((".swc", read_swc), (".json", read_skeleton_json)):
            f = src / f"{int(skeleton_id)}{suffix}"
            if f.is_file():
                return reader(f)
        raise SkeletonError(f"{src / (str(int(skeleton_id)) + '.swc')}: skeleton file not found "
                            f"(nor {int(skeleton_id)}.json; {key} = {source})")
    if src.is_file():
        if src.suffix.lower() == ".swc":
            return read_swc(src)
        return read_skeleton_json(src, skeleton_id)
    raise SkeletonError(f"{src}: {key}: no such folder or file")


def _graph(skel: Skeleton):
    child = np.flatnonzero(skel.parents >= 0)
    par = skel.parents[child]
    w = np.linalg.norm(skel.positions[child] - skel.positions[par], axis=1)
    w = np.maximum(w, 1e-9)  # a zero-length edge is still an edge
    n = len(skel.ids)
    return coo_matrix((w, (child, par)), shape=(n, n)).tocsr()


def geodesic_distances(skel: Skeleton, points) -> np.ndarray:
    """(k, k) path lengths (nm) along ``skel`` between the nodes nearest to each of ``points``
    ((k, 3) nm, (z, y, x)); ``inf`` between unconnected pieces, 0 for points on one node."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(points) == 0:
        return np.zeros((0, 0))
    _, nearest = cKDTree(skel.positions).query(points)
    nodes, inverse = np.unique(nearest, return_inverse=True)
    d = dijkstra(_graph(skel), directed=False, indices=nodes)
    return d[:, nodes][inverse][:, inverse]
