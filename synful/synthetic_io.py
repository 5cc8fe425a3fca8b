"""Synthetic volumes on disk: :func:`write_synthetic` (a CREMI-layout zarr container, written
atomically and reused when its parameters match), :func:`read_synthetic_params` and :func:`show`
(a PNG of a few sections with the partner sites).  All three are importable from
:mod:`synful.synthetic`, whose :func:`~synful.synthetic.generate` makes the volume.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np

from .errors import SynfulError
from .io.files import atomic_write

__all__ = ["write_synthetic", "read_synthetic_params", "show", "show_figure"]

logger = logging.getLogger("synful.synthetic")

_PARAMS_ATTR = "synful_synthetic"


def _params(shape, seed, voxel_size, offset, extra) -> dict:
    """The parameters that define a container's content, as plain JSON types."""
    from .synthetic import GENERATOR_VERSION

    config = {"generator_version": GENERATOR_VERSION, "shape": [int(s) for s in shape], "seed": int(seed),
              "voxel_size": [int(v) for v in voxel_size], "offset": [int(o) for o in offset],
              **dict(sorted(extra.items()))}
    return json.loads(json.dumps(config, default=lambda v: np.asarray(v).tolist()))


def read_synthetic_params(path) -> dict | None:
    """The generator parameters stored in a complete synthetic container, else None."""
    p = Path(path) / ".zattrs"
    try:
        return json.loads(p.read_text()).get(_PARAMS_ATTR)
    except (OSError, json.JSONDecodeError):
        return None


def write_synthetic(path, shape, *, seed: int = 0, voxel_size=(40, 4, 4), offset=(0, 0, 0), chunk_shape=None,
                    overwrite: bool = False, **params) -> Path:
    """Generate a volume and write it as a zarr v2 container in the CREMI layout; returns ``path``.

    Layout: ``volumes/raw`` (uint8), ``volumes/labels/neuron_ids`` (uint64),
    both with ``voxel_size`` / ``offset`` (and ``resolution``) attributes;
    ``annotations/...`` as :mod:`synful.io.cremi` (locations relative to the
    ``annotations`` offset = ``offset``), the T-bar classes in
    ``annotations/presynaptic_site/transmitters`` (read back with
    :func:`synful.io.cremi.read_transmitters`).  The generator parameters are
    the root attribute ``synful_synthetic``, written last.

    The container is built in a temporary sibling folder and renamed into
    place.  An existing complete container with the same parameters is
    reused as is; one with other parameters (or any other folder) is an
    error unless ``overwrite``.  ``params`` go to :func:`generate`.
    """
    import zarr

    from .io.cremi import NEURON_IDS, RAW, write_annotations
    from .io.volumes import write_volume
    from .synthetic import _check_shape, generate

    path = Path(path)
    shape, voxel_size = _check_shape(shape, voxel_size)
    config = _params(shape, seed, voxel_size, offset, params)
    if path.exists():
        existing = read_synthetic_params(path)
        if existing == config:
            logger.info("%s: reusing synthetic container (same parameters)", path)
            return path
        if not overwrite:
            what = "a synthetic container with other parameters" if existing else "not a synthetic container"
            raise SynfulError(f"{path}: exists and is {what}; remove it or use --overwrite")
    from .preflight import check_writable

    check_writable(path, "synthetic container")  # before generating anything
    vol = generate(shape, seed=seed, voxel_size=voxel_size, offset=offset, **params)
    path.parent.mkdir(parents=True, exist_ok=True)
    # not io.files.atomic_write: a container another process wrote meanwhile with the same parameters is
    # kept (readers may have it open), and only a different one is swapped out
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        zarr.open_group(str(tmp), mode="w")
        chunks = chunk_shape or tuple(min(s, c) for s, c in zip(shape, (16, 256, 256)))
        write_volume(tmp, RAW, vol.raw, voxel_size, offset, chunk_shape=chunks)
        write_volume(tmp, NEURON_IDS, vol.labels, voxel_size, offset, chunk_shape=chunks)
        write_annotations(tmp, vol.partners, transmitters=list(vol.transmitters), offset=offset)
        root = zarr.open_group(str(tmp), mode="a")
        root.attrs[_PARAMS_ATTR] = config
        if path.exists() and read_synthetic_params(path) == config:
            logger.info("%s: written meanwhile by another process with the same parameters", path)
        elif path.exists():
            trash = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.rename(path, trash)
            os.rename(tmp, path)
            shutil.rmtree(trash) if trash.is_dir() else trash.unlink()
        else:
            os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    logger.info("%s: %s voxels, %d T-bars, %d partners", path, "x".join(map(str, shape)), len(vol.tbars),
                len(vol.partners))
    return path


#: how each kind of partner is drawn: link colour, (pre marker, colour, size), (post marker, colour, size)
_GROUND_TRUTH_STYLE = ("yellow", ("^", "red", 7), ("o", "cyan", 6))
_PREDICTED_STYLE = ("orange", ("^", "orange", 6), ("s", "magenta", 5))


def show(container, out=None, *, num_slices: int = 4, raw_dataset: str = "volumes/raw", partners=None,
         predicted=None, min_score: float | None = None, ground_truth: bool = True, max_size: int = 800,
         title: str | None = None) -> Path:
    """Write :func:`show_figure` as a PNG; returns its path (default: the container with suffix ``.png``)."""
    fig = show_figure(container, num_slices=num_slices, raw_dataset=raw_dataset, partners=partners,
                      predicted=predicted, min_score=min_score, ground_truth=ground_truth, max_size=max_size,
                      title=title)
    out = Path(out) if out is not None else Path(container).with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))


def show_figure(container, *, num_slices: int = 4, raw_dataset: str = "volumes/raw", partners=None,
                predicted=None, min_score: float | None = None, ground_truth: bool = True, max_size: int = 800,
                title: str | None = None):
    """A matplotlib ``Figure`` of ``num_slices`` z-sections of the raw with partner sites drawn on them.

    Ground truth (``partners``: a PARTNER_DTYPE array or a .json/.csv path;
    default: the container's CREMI annotations; left out with
    ``ground_truth=False``): pre-sites red triangles, post-sites cyan circles,
    links yellow.  Predictions (``predicted``: an array, a partner file, or a
    prediction run directory whose result collection is read; only those
    scoring at least ``min_score`` when given), drawn on top:
    pre-sites orange triangles, post-sites magenta squares, links orange.  A
    link is dashed when its other end lies in another section.  The figure's
    legend names every marker and line style drawn, its title what is shown
    and how many partners of each kind.  The sections shown are those with
    the most sites (of both kinds); sections larger than ``max_size`` pixels
    are subsampled.  ``title`` starts the title (default: the container's name).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from .io.partners import empty_partners
    from .io.volumes import open_volume

    container = Path(container)
    raw = open_volume(container, raw_dataset)
    partners, predicted = _shown_partners(container, partners, predicted, ground_truth)
    if predicted is not None and min_score is not None:
        predicted = predicted[predicted["score"] >= min_score]
    vs = np.asarray(raw.voxel_size)
    off = np.asarray(raw.offset)
    kinds = [(name, links, style) for name, links, style in
             (("ground truth", partners, _GROUND_TRUTH_STYLE), ("predicted", predicted, _PREDICTED_STYLE))
             if links is not None]
    every = np.concatenate([links for _, links, _ in kinds]) if kinds else empty_partners(0)
    zs = _busiest_sections(every, raw.shape[-3], num_slices, off, vs)
    n = len(zs)
    stride = max(1, int(math.ceil(max(raw.shape[-2:]) / max_size)))
    fig = Figure(figsize=(4.2 * n, 5.2))
    axes = fig.subplots(1, n, squeeze=False)
    for ax, z in zip(axes[0], zs):
        _draw_section(ax, raw, z, stride, [(links, *style) for _, links, style in kinds], off, vs)
    handles = []
    for name, _, (line, (pm, pc, ps), (qm, qc, qs)) in kinds:
        handles += [Line2D([], [], marker=pm, color=pc, ms=ps, mec="black", mew=0.5, ls="none",
                           label=f"{name} pre-site"),
                    Line2D([], [], marker=qm, color=qc, ms=qs, mec="black", mew=0.5, ls="none",
                           label=f"{name} post-site"),
                    Line2D([], [], color=line, lw=1, ls="-", label=f"{name} link, both sites in this section"),
                    Line2D([], [], color=line, lw=1, ls="--", label=f"{name} link, other site in another section")]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=7, frameon=False)
    counts = " and ".join(f"{name} ({len(links)} partners)" for name, links, _ in kinds) or "no partners"
    if predicted is not None and min_score is not None:
        counts += f", predictions scoring >= {min_score:g}"
    fig.suptitle(f"{title or container.name}: {counts}", fontsize=10)
    fig.tight_layout(rect=(0, 0.04 * (1 + len(kinds)), 1, 1))
    return fig


def _shown_partners(container: Path, partners, predicted, ground_truth: bool = True):
    """``(partners, predicted)`` as PARTNER_DTYPE arrays or None (not shown): paths read, a prediction run
    directory's collection queried, ``partners`` defaulting to the container's annotations (none when it
    has none)."""
    from .io.cremi import read_annotations
    from .io.partners import empty_partners, read_partners

    if not ground_truth:
        partners = None
    elif partners is None:
        try:
            partners = read_annotations(container, labels_dataset=None)
        except SynfulError:
            partners = empty_partners(0)
    elif not isinstance(partners, np.ndarray):
        partners = read_partners(partners)
    if predicted is not None and not isinstance(predicted, np.ndarray):
        if Path(predicted).is_dir() and (Path(predicted) / "predict_config.ini").is_file():
            from .store import open_run_store

            with open_run_store(predicted) as store:
                predicted = store.query()
        else:
            predicted = read_partners(predicted)
    return partners, predicted


def _section_index(a, which, off, vs):
    return (a[f"{which}_z"] - off[0]) // vs[0]


def _busiest_sections(partners, nz: int, num_slices: int, off, vs) -> list[int]:
    """The ``num_slices`` z-sections (of ``nz``) with the most partner sites, in order; evenly spaced without sites."""
    pre_z, post_z = _section_index(partners, "pre", off, vs), _section_index(partners, "post", off, vs)
    counts = np.bincount(np.concatenate([pre_z, post_z]).clip(0, nz - 1), minlength=nz) if len(partners) \
        else np.zeros(nz, int)
    n = max(1, min(num_slices, nz))
    order = np.argsort(-counts, kind="stable")[:n] if counts.any() else np.linspace(0, nz - 1, n).astype(int)
    return sorted(int(z) for z in order)


def _draw_section(ax, raw, z: int, stride: int, styles, off, vs):
    """Section ``z`` of ``raw`` (every ``stride``-th pixel) with the partners of ``styles`` on it."""
    img = np.asarray(raw.data[..., z, ::stride, ::stride].compute())
    if img.ndim == 3:
        img = img[0]
    ax.imshow(img, cmap="gray", vmin=0, vmax=255 if img.dtype == np.uint8 else None, interpolation="nearest")
    for links, line_colour, (pm, pc, ps), (qm, qc, qs) in styles:
        for p, pz, qz in zip(links, _section_index(links, "pre", off, vs), _section_index(links, "post", off, vs)):
            if z not in (pz, qz):
                continue
            py, px = (p["pre_y"] - off[1]) / vs[1] / stride, (p["pre_x"] - off[2]) / vs[2] / stride
            qy, qx = (p["post_y"] - off[1]) / vs[1] / stride, (p["post_x"] - off[2]) / vs[2] / stride
            ax.plot([px, qx], [py, qy], color=line_colour, lw=1, ls="-" if pz == qz else "--")
            if pz == z:
                ax.plot(px, py, marker=pm, color=pc, ms=ps, mec="black", mew=0.5, ls="none")
            if qz == z:
                ax.plot(qx, qy, marker=qm, color=qc, ms=qs, mec="black", mew=0.5, ls="none")
    ax.set_title(f"z = {int(off[0] + z * vs[0])} nm (section {z})", fontsize=9)
    ax.set_axis_off()
