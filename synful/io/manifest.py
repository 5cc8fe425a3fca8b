"""Dataset manifests: the YAML list of samples an experiment trains, validates and tests on.

Format (see ``configs/manifest_example.yaml``)::

    defaults:                 # optional, applied to every sample
      raw_dataset: volumes/raw
    samples:
      - name: sample_A                          # unique; default: container file name
        container: ../data/sample_A.zarr        # relative to the manifest's folder
        raw_dataset: volumes/raw                # default
        labels_dataset: volumes/labels/neuron_ids   # default; null = no neuron ids
        roi: {offset: [0, 0, 0], shape: [2000, 4000, 4000]}   # nm, z/y/x; omit = whole raw
        annotations: container                  # default (CREMI structure in the container),
                                                # or a partner file: partners.json / partners.csv
        split: train                            # train | validation | test

:func:`read_manifest` checks the structure only (no data is opened);
:func:`open_sample` opens a sample's volumes and checks datasets, voxel sizes
and ROI.  Every error names the manifest, the sample (index and name) and the
key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from funlib.geometry import Roi
from funlib.persistence import Array

from ..errors import SynfulError
from .cremi import NEURON_IDS, RAW, read_annotations
from .files import write_text
from .partners import NO_ID, read_partners
from .volumes import check_roi, check_same_voxel_size, lookup_ids, open_volume

__all__ = [
    "SPLITS",
    "ManifestError",
    "Sample",
    "SampleArrays",
    "read_manifest",
    "write_manifest",
    "open_sample",
    "read_sample_partners",
]

SPLITS = ("train", "validation", "test")
_KEYS = ("name", "container", "raw_dataset", "labels_dataset", "roi", "annotations", "split")
_PARTNER_SUFFIXES = (".json", ".csv")


class ManifestError(SynfulError):
    """A dataset manifest is malformed; the message names file, sample and key."""


@dataclass(frozen=True)
class Sample:
    """One training / validation / test sample of a manifest.

    ``container`` and ``annotations`` are absolute paths (str); ``annotations``
    equals ``container`` when the partners are the container's CREMI
    annotations, else it is a ``.json`` (FAFB) or ``.csv`` partner file.
    ``roi`` is in nm (z, y, x), None for the whole raw dataset.
    """

    name: str
    container: str
    raw_dataset: str = RAW
    labels_dataset: str | None = NEURON_IDS
    roi: Roi | None = None
    annotations: str = ""
    split: str = "train"

    @property
    def annotations_in_container(self) -> bool:
        """True when the partners come from the container's CREMI annotations."""
        return self.annotations == self.container


@dataclass(frozen=True)
class SampleArrays:
    """A sample's volumes, opened and checked; ``roi`` is the sample ROI or the whole raw ROI."""

    raw: Array
    labels: Array | None
    roi: Roi


def _int_list(value, where: str, positive: bool = False) -> list[int]:
    if not isinstance(value, (list, tuple)) or len(value) != 3 or \
            any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise ManifestError(f"{where}: expected three integers (nm, z/y/x), got {value!r}")
    if positive and any(v <= 0 for v in value):
        raise ManifestError(f"{where}: expected positive sizes, got {value!r}")
    return list(value)


def _parse_roi(value, where: str) -> Roi | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"offset", "shape"}:
        raise ManifestError(f"{where}: expected {{offset: [z, y, x], shape: [z, y, x]}} in nm, got {value!r}")
    return Roi(_int_list(value["offset"], f"{where}.offset"), _int_list(value["shape"], f"{where}.shape", True))


def _parse_sample(entry, defaults: dict, index: int, base: Path, source: str) -> Sample:
    where = f"{source}: samples[{index}]"
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: expected a mapping of keys, got {entry!r}")
    merged = {**defaults, **entry}
    if isinstance(entry.get("name"), str):
        where = f"{source}: samples[{index}] ({entry['name']})"
    elif isinstance(entry.get("container"), str) and entry["container"]:
        where = f"{source}: samples[{index}] ({Path(entry['container']).stem})"
    unknown = sorted(set(merged) - set(_KEYS))
    if unknown:
        raise ManifestError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(_KEYS)})")
    if "container" not in entry:
        raise ManifestError(f"{where}: container: missing")
    container = merged["container"]
    if not isinstance(container, str) or not container:
        raise ManifestError(f"{where}: container: expected a path, got {container!r}")
    container_path = (base / Path(container).expanduser()).resolve()
    name = merged.get("name", container_path.stem)
    if not isinstance(name, str) or not name:
        raise ManifestError(f"{where}: name: expected a non-empty string, got {name!r}")
    where = f"{source}: samples[{index}] ({name})"
    raw = merged.get("raw_dataset", RAW)
    if not isinstance(raw, str) or not raw:
        raise ManifestError(f"{where}: raw_dataset: expected a dataset name, got {raw!r}")
    labels = merged.get("labels_dataset", NEURON_IDS)
    if labels is not None and (not isinstance(labels, str) or not labels):
        raise ManifestError(f"{where}: labels_dataset: expected a dataset name or null, got {labels!r}")
    roi = _parse_roi(merged.get("roi"), f"{where}: roi")
    ann = merged.get("annotations", "container")
    if not isinstance(ann, str) or not ann:
        raise ManifestError(f"{where}: annotations: expected 'container' or a .json/.csv path, got {ann!r}")
    if ann == "container":
        annotations = str(container_path)
    else:
        if Path(ann).suffix.lower() not in _PARTNER_SUFFIXES:
            raise ManifestError(f"{where}: annotations: expected 'container' or a .json/.csv partner file, "
                                f"got {ann!r}")
        annotations = str((base / Path(ann).expanduser()).resolve())
    split = merged.get("split", "train")
    if split not in SPLITS:
        raise ManifestError(f"{where}: split: expected one of {', '.join(SPLITS)}, got {split!r}")
    return Sample(name=name, container=str(container_path), raw_dataset=raw.strip("/"),
                  labels_dataset=labels.strip("/") if labels else None, roi=roi,
                  annotations=annotations, split=split)


def read_manifest(path, check_data: bool = False) -> list[Sample]:
    """Read and validate a YAML dataset manifest; relative paths resolve against its folder.

    With ``check_data`` every sample is also opened (:func:`open_sample`):
    datasets exist, raw and labels share a voxel size, the ROI lies inside.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest not found") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ManifestError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(doc, dict) or "samples" not in doc:
        raise ManifestError(f"{path}: expected a mapping with a 'samples' list")
    unknown = sorted(set(doc) - {"samples", "defaults"})
    if unknown:
        raise ManifestError(f"{path}: unknown top-level key(s) {', '.join(map(str, unknown))} "
                            "(known: samples, defaults)")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ManifestError(f"{path}: defaults: expected a mapping")
    bad = sorted(set(defaults) & {"name", "container"})
    if bad:
        raise ManifestError(f"{path}: defaults: key(s) {', '.join(bad)} must be set per sample")
    samples_doc = doc["samples"]
    if not isinstance(samples_doc, list) or not samples_doc:
        raise ManifestError(f"{path}: samples: expected a non-empty list")
    base = path.resolve().parent
    samples = [_parse_sample(e, defaults, i, base, str(path)) for i, e in enumerate(samples_doc)]
    seen: dict[str, int] = {}
    for i, s in enumerate(samples):
        if s.name in seen:
            raise ManifestError(f"{path}: samples[{i}] ({s.name}): name: duplicate of samples[{seen[s.name]}]")
        seen[s.name] = i
    if check_data:
        for i, s in enumerate(samples):
            try:
                open_sample(s)
            except SynfulError as e:
                raise ManifestError(f"{path}: samples[{i}] ({s.name}): {e}") from None
    return samples


def write_manifest(samples, path) -> Path:
    """Write samples as a manifest (paths relative to the manifest's folder when below it)."""
    import yaml

    path = Path(path)
    base = path.resolve().parent
    docs = []
    for s in samples:
        def rel(p):
            try:
                return str(Path(p).relative_to(base))
            except ValueError:
                return str(p)
        d = {"name": s.name, "container": rel(s.container), "raw_dataset": s.raw_dataset,
             "labels_dataset": s.labels_dataset}
        if s.roi is not None:
            d["roi"] = {"offset": [int(v) for v in s.roi.offset], "shape": [int(v) for v in s.roi.shape]}
        d["annotations"] = "container" if s.annotations_in_container or not s.annotations else rel(s.annotations)
        d["split"] = s.split
        docs.append(d)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, yaml.safe_dump({"samples": docs}, sort_keys=False))


def add_manifest_sample(path, container, split: str = "train") -> tuple[Path, str]:
    """Add a container (CREMI layout: raw, neuron ids, annotations) to a manifest as one sample.

    Creates the manifest when it does not exist.  The sample is named after
    the container's file name without suffix and covers the whole raw; its
    path is written relative to the manifest's folder when below it.  Adding
    the same container with the same split again changes nothing; a sample
    of that name with another container or split is refused, naming it.
    The manifest is rewritten as YAML (comments are not kept) and read back
    through :func:`read_manifest` before it replaces the old file.

    Returns the manifest path and ``"added"`` or ``"already listed"``.
    """
    import yaml

    path, container = Path(path), Path(container).resolve()
    if split not in SPLITS:
        raise ManifestError(f"{path}: split: expected one of {', '.join(SPLITS)}, got {split!r}")
    name = container.stem
    if path.exists():
        samples = read_manifest(path)
        doc = yaml.safe_load(path.read_text())
    else:
        samples, doc = [], {"samples": []}
    for i, s in enumerate(samples):
        if s.name == name:
            if Path(s.container) == container and s.split == split:
                return path, "already listed"
            raise ManifestError(f"{path}: samples[{i}] ({name}): already lists {s.container} (split {s.split}); "
                                f"rename the container or edit the manifest")
    base = path.resolve().parent
    try:
        rel = str(container.relative_to(base))
    except ValueError:
        rel = str(container)
    doc["samples"].append({"name": name, "container": rel, "split": split})
    text = yaml.safe_dump(doc, sort_keys=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    check = path.with_name(f".{path.name}.check")
    try:
        write_text(check, text)
        read_manifest(check)
        check.replace(path)
    finally:
        check.unlink(missing_ok=True)
    return path, "added"


def open_sample(sample: Sample) -> SampleArrays:
    """Open a sample's raw (and labels) and check them.

    Raises a :class:`~synful.errors.SynfulError` subclass for a missing
    container or dataset, a voxel-size mismatch between raw and labels, or a
    ROI outside the data (or not aligned with the voxels).
    """
    raw = open_volume(sample.container, sample.raw_dataset)
    labels = open_volume(sample.container, sample.labels_dataset) if sample.labels_dataset else None
    if labels is not None:
        check_same_voxel_size(raw, labels, f"{sample.raw_dataset}", f"{sample.labels_dataset}")
    roi = sample.roi if sample.roi is not None else raw.roi
    check_roi(raw, roi, f"sample {sample.name} ROI")
    if labels is not None:
        check_roi(labels, roi, f"sample {sample.name} ROI (labels {sample.labels_dataset})")
    return SampleArrays(raw, labels, roi)


def _inside(partners: np.ndarray, roi: Roi, prefix: str) -> np.ndarray:
    begin, end = np.asarray(roi.begin), np.asarray(roi.end)
    loc = np.stack([partners[f"{prefix}_z"], partners[f"{prefix}_y"], partners[f"{prefix}_x"]], 1)
    return np.all((loc >= begin) & (loc < end), axis=1)


def read_sample_partners(sample: Sample, by: str = "post", fill_seg_ids: bool = True) -> np.ndarray:
    """The sample's ground-truth partners (PARTNER_DTYPE), restricted to its ROI when set.

    Partners come from the container's CREMI annotations or from the
    ``.json`` / ``.csv`` partner file.  ``by`` says which end must lie in the
    ROI: ``"post"`` (default: the post-site is what the network's targets are
    drawn around), ``"pre"`` or ``"both"``.  With ``fill_seg_ids``, missing
    (NO_ID) segment ids are looked up in the sample's labels dataset.
    """
    if by not in ("post", "pre", "both"):
        raise SynfulError(f"read_sample_partners: by must be 'post', 'pre' or 'both', not {by!r}")
    labels_ds = sample.labels_dataset
    if sample.annotations_in_container:
        partners = read_annotations(sample.container, labels_ds)
    else:
        partners = read_partners(sample.annotations)
        if fill_seg_ids and labels_ds and len(partners) and \
                ((partners["pre_seg_id"] == NO_ID) | (partners["post_seg_id"] == NO_ID)).any():
            labels = open_volume(sample.container, labels_ds)
            for prefix in ("pre", "post"):
                missing = partners[f"{prefix}_seg_id"] == NO_ID
                loc = np.stack([partners[f"{prefix}_z"], partners[f"{prefix}_y"], partners[f"{prefix}_x"]], 1)
                partners[f"{prefix}_seg_id"][missing] = lookup_ids(labels, loc[missing])
    if sample.roi is not None and len(partners):
        keep = {"post": lambda: _inside(partners, sample.roi, "post"),
                "pre": lambda: _inside(partners, sample.roi, "pre"),
                "both": lambda: _inside(partners, sample.roi, "pre") & _inside(partners, sample.roi, "post")}[by]()
        partners = partners[keep]
    return partners
