"""Tissue masks: which blocks of a blockwise task hold any tissue, from a low-resolution mask dataset.

A whole-brain bounding box is mostly resin and empty space (FAFB's tissue is a small part of its
bounding box); blocks without tissue are neither predicted nor extracted.  The mask is any zarr/N5/HDF5
dataset with a voxel size and offset (nm, z/y/x) of its own, usually far coarser than the raw (e.g.
1-2 um per voxel); a nonzero voxel means tissue.  A block is kept when any mask voxel overlapping its
write ROI is nonzero; blocks beyond the mask's ROI count as without tissue.  The result is a daisy
``skip_mask`` over the task's block grid (1 = skip), so skipped blocks are neither processed nor
reported as missing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from funlib.geometry import Coordinate, Roi

from .errors import SynfulError


class TissueMaskError(SynfulError):
    """A tissue mask cannot be opened or does not fit the task; the message names container and dataset."""


@dataclass(frozen=True)
class TissueMask:
    """A tissue mask read into memory: ``data`` bool (z, y, x) over ``roi`` (nm) at ``voxel_size`` (nm)."""

    container: str
    dataset: str
    data: np.ndarray
    roi: Roi
    voxel_size: Coordinate

    @property
    def name(self) -> str:
        return f"{self.container}/{self.dataset}"

    def digest(self) -> str:
        """sha256 (16 hex digits) of the mask's voxels, ROI and voxel size: what a run's signature records."""
        h = hashlib.sha256()
        h.update(repr((tuple(self.roi.offset), tuple(self.roi.shape), tuple(self.voxel_size))).encode())
        h.update(np.packbits(self.data).tobytes())
        return h.hexdigest()[:16]


def read_tissue_mask(container: str, dataset: str, *, where: str = "tissue mask") -> TissueMask:
    """Open ``container/dataset`` and read it whole as a boolean mask (nonzero = tissue).

    ``where`` prefixes error messages (e.g. ``FILE [Prediction] tissue_mask_container``).  A missing
    container or dataset, a mask with channels, or a mask over 2**31 voxels (too fine for a low-resolution
    mask) is a :class:`TissueMaskError`.
    """
    from pathlib import Path

    from .io.volumes import open_volume

    if not Path(container).exists():
        raise TissueMaskError(f"{where}: {container} does not exist")
    try:
        array = open_volume(container, dataset)
    except SynfulError as e:
        raise TissueMaskError(f"{where}: {e}") from None
    except Exception as e:  # a missing dataset surfaces as KeyError / FileNotFoundError / ValueError
        raise TissueMaskError(f"{where}: cannot open {container}/{dataset}: {e}") from None
    shape = tuple(array.roi.shape / array.voxel_size)
    if len(array.shape) != 3:
        raise TissueMaskError(f"{where}: {container}/{dataset} has shape {tuple(array.shape)}; a tissue mask is "
                              f"one channel, (z, y, x)")
    if int(np.prod(shape, dtype=np.int64)) > 2**31:
        raise TissueMaskError(f"{where}: {container}/{dataset} has {shape} voxels; use a low-resolution mask "
                              f"(e.g. 1-2 um voxels)")
    data = np.asarray(array[array.roi]) != 0
    return TissueMask(container=str(container), dataset=dataset, data=data, roi=array.roi,
                      voxel_size=Coordinate(array.voxel_size))


def _axis_ranges(begin: int, step: int, count: int, mask_begin: int, mask_vs: int, mask_len: int):
    """Per block along one axis: the [lo, hi) mask voxels overlapping [begin + i*step, begin + (i+1)*step)."""
    starts = begin + np.arange(count, dtype=np.int64) * step
    lo = np.clip(np.floor_divide(starts - mask_begin, mask_vs), 0, mask_len)
    hi = np.clip(-np.floor_divide(-(starts + step - mask_begin), mask_vs), 0, mask_len)
    return lo, hi


def blocks_with_tissue(mask: TissueMask, blocks_begin, block_shape, grid_shape) -> np.ndarray:
    """bool array of ``grid_shape``: True where the block's write ROI overlaps a nonzero mask voxel.

    Blocks form a regular grid: block ``(i, j, k)`` covers ``blocks_begin + (i, j, k) * block_shape``
    (nm, z/y/x) to one ``block_shape`` further, as daisy lays out write ROIs.  Reduces the mask one axis
    at a time (work proportional to the mask's size, memory to the block grid's).
    """
    out = mask.data
    for axis in range(3):
        lo, hi = _axis_ranges(int(blocks_begin[axis]), int(block_shape[axis]), int(grid_shape[axis]),
                              int(mask.roi.begin[axis]), int(mask.voxel_size[axis]), out.shape[axis])
        moved = np.moveaxis(out, axis, 0)
        reduced = np.zeros((len(lo),) + moved.shape[1:], dtype=bool)
        for i, (a, b) in enumerate(zip(lo, hi)):
            if b > a:
                reduced[i] = moved[a:b].any(axis=0)
        out = np.moveaxis(reduced, 0, axis)
    return out


def task_skip_mask(mask: TissueMask | None, total_roi: Roi, read_roi: Roi, write_roi: Roi,
                   grid_shape) -> np.ndarray | None:
    """daisy's ``skip_mask`` (uint8, 1 = skip) for a task laid out by ``total_roi`` / ``read_roi`` /
    ``write_roi`` (daisy's arguments, nm) with block grid ``grid_shape`` (``Task.block_grid_shape``);
    None without a mask."""
    if mask is None:
        return None
    begin = total_roi.begin + (write_roi.begin - read_roi.begin)
    keep = blocks_with_tissue(mask, begin, write_roi.shape, grid_shape)
    return (~keep).astype(np.uint8)
