"""Volumes and partner annotations on disk.

- :mod:`synful.io.volumes`: zarr v2 / zarr v3 / N5 / HDF5 volumes as funlib
  Arrays (``open_volume``, ``prepare_volume``, ``write_volume``).
- :mod:`synful.io.cremi`: CREMI containers and annotations
  (``read_annotations``, ``write_annotations``, ``read_transmitters``,
  ``read_cremi``, ``write_cremi``).
- :mod:`synful.io.partners`: partner records (``PARTNER_DTYPE``, ``NO_ID``)
  and FAFB JSON / CSV files (``read_partners``, ``write_partners``).
- :mod:`synful.io.manifest`: YAML dataset manifests (``read_manifest``,
  ``Sample``, ``open_sample``, ``read_sample_partners``).

The names below are importable from ``synful.io`` directly; modules load on
first use (funlib / tensorstore imports are slow).
"""

from importlib import import_module

_EXPORTS = {
    "open_volume": "volumes", "prepare_volume": "volumes", "write_volume": "volumes",
    "volume_format": "volumes", "lookup_ids": "volumes", "VolumeError": "volumes",
    "DatasetNotFoundError": "volumes", "VoxelSizeMismatchError": "volumes", "RoiOutsideError": "volumes",
    "read_annotations": "cremi", "write_annotations": "cremi", "read_transmitters": "cremi",
    "read_cremi": "cremi", "write_cremi": "cremi",
    "PARTNER_DTYPE": "partners", "NO_ID": "partners", "empty_partners": "partners",
    "read_partners": "partners", "write_partners": "partners",
    "read_manifest": "manifest", "write_manifest": "manifest", "Sample": "manifest",
    "open_sample": "manifest", "read_sample_partners": "manifest", "ManifestError": "manifest",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
