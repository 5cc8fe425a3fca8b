"""Import Synister-style JSON exports of synapses, skeletons and hemilineages into the store.

Record schemas (Synister's field names; other fields are dropped)::

    synapse      synapse_id (int), x, y, z (number, nm), skeleton_id (int),
                 [prepost ("pre" or "post")], [brain_region (string or None)]
    skeleton     skeleton_id (int), nt_known (transmitter name or list of names),
                 [hemi_lineage_id (int or None)]
    hemilineage  hemi_lineage_id (int), hemi_lineage_name (string)

A JSON file holds a list of records, a dict ``{id: record}`` (the id fills the
record's id field when it lacks one; Synister's export format), or one record
per line (``mongoexport``'s default).  Transmitter names are lower-cased.

Import validates everything before writing anything: a malformed record
(including an integer id or a coordinate outside the int64 range, which
MongoDB cannot store) raises :class:`DataImportError` naming the file, the
record index and the field;
duplicate ids and dangling references (a synapse's skeleton or a skeleton's
hemilineage that is not in the import) are errors too.  Existing collections
are only replaced with ``overwrite=True``; on SQLite the whole import is one
transaction.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import SynfulError
from ..io.files import write_json
from .db import HEMILINEAGES, SKELETONS, SYNAPSES, DocumentStore, StoreError

__all__ = [
    "DataImportError",
    "ImportSummary",
    "load_records",
    "validate_synapses",
    "validate_skeletons",
    "validate_hemilineages",
    "import_collections",
    "export_collections",
    "skeleton_transmitters",
]


class DataImportError(SynfulError):
    """A JSON export is unreadable or holds a malformed record; the message names file, record index and field."""


@dataclass(frozen=True)
class ImportSummary:
    """How many records of each collection were written."""

    synapses: int
    skeletons: int
    hemilineages: int


def load_records(path, id_field: str) -> list[dict]:
    """Records of a JSON export (list, ``{id: record}`` dict, or JSON lines), in file order."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise DataImportError(f"{path}: cannot read: {e.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as first:
        data = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    data.append(json.loads(line))
                except json.JSONDecodeError:
                    raise DataImportError(f"{path}: not JSON (line {first.lineno}: {first.msg})") from None
    if isinstance(data, dict):
        records = []
        for k, v in data.items():
            if isinstance(v, dict) and id_field not in v:
                v = {id_field: _key_id(k), **v}
            records.append(v)
        return records
    if not isinstance(data, list):
        raise DataImportError(f"{path}: expected a list of records, a dict of id -> record, or JSON lines")
    return data


def _key_id(k: str):
    try:
        return int(k)
    except ValueError:
        return k


# ---- field checks: each returns the cleaned value or raises ValueError(reason) -----------------------------

#: the integer range both backends store (MongoDB's int64; Synful's ids and nm coordinates are int64 too)
INT64_MIN, INT64_MAX = -2 ** 63, 2 ** 63 - 1


def _int64(i: int, v) -> int:
    if not INT64_MIN <= i <= INT64_MAX:
        raise ValueError(f"{v!r} is outside the int64 range [-2**63, 2**63 - 1]")
    return i


def _int(v):
    if isinstance(v, bool):
        raise ValueError(f"expected an integer, got {v!r}")
    if isinstance(v, int):
        return _int64(v, v)
    if isinstance(v, float) and v.is_integer():
        return _int64(int(v), v)
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return _int64(int(v.strip()), v)
    raise ValueError(f"expected an integer, got {v!r}")


def _opt_int(v):
    return None if v is None else _int(v)


def _number(v):
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ValueError(f"expected a number (nm), got {v!r}")
    # a location is int64 nm once rounded (as partner sites are): larger magnitudes are no location
    if isinstance(v, int):
        return _int64(v, v)
    try:
        f = float(v)
    except ValueError:
        raise ValueError(f"expected a number (nm), got {v!r}") from None
    if not math.isfinite(f):
        raise ValueError(f"expected a finite number (nm), got {v!r}")
    if not INT64_MIN <= f < 2.0 ** 63:
        raise ValueError(f"{v!r} nm is outside the int64 range [-2**63, 2**63 - 1]")
    return int(f) if f.is_integer() else f


def _string(v):
    if not isinstance(v, str) or not v.strip():
        raise ValueError(f"expected a non-empty string, got {v!r}")
    return v.strip()


def _opt_string(v):
    return None if v is None else _string(v)


def _prepost(v):
    if v is None:
        return None
    if v not in ("pre", "post"):
        raise ValueError(f"expected 'pre' or 'post', got {v!r}")
    return v


def _transmitters(v):
    if v is None:
        return []
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(t, str) and t.strip() for t in items):
        raise ValueError(f"expected a transmitter name or a list of names, got {v!r}")
    return [t.strip().lower() for t in items]


# field: (check, required)
_SYNAPSE = {"synapse_id": (_int, True), "x": (_number, True), "y": (_number, True), "z": (_number, True),
            "skeleton_id": (_int, True), "prepost": (_prepost, False), "brain_region": (_opt_string, False)}
_SKELETON = {"skeleton_id": (_int, True), "nt_known": (_transmitters, True), "hemi_lineage_id": (_opt_int, False)}
_HEMILINEAGE = {"hemi_lineage_id": (_int, True), "hemi_lineage_name": (_string, True)}


def _validate(records: list, schema: dict, id_field: str, source: str) -> list[dict]:
    out, seen = [], {}
    for i, rec in enumerate(records):
        where = f"{source} record {i}"
        if not isinstance(rec, dict):
            raise DataImportError(f"{where}: expected an object, got {type(rec).__name__}")
        if id_field in rec:
            where += f" ({id_field} {rec[id_field]!r})"
        doc = {}
        for field, (check, required) in schema.items():
            if field not in rec:
                if required:
                    raise DataImportError(f"{where}: field '{field}' is missing")
                continue
            try:
                value = check(rec[field])
            except ValueError as e:
                raise DataImportError(f"{where}: field '{field}': {e}") from None
            doc[field] = value
        if doc[id_field] in seen:
            raise DataImportError(f"{where}: field '{id_field}': duplicate of record {seen[doc[id_field]]}")
        seen[doc[id_field]] = i
        out.append(doc)
    return out


def validate_synapses(records: list, source: str = "synapses") -> list[dict]:
    """Clean synapse documents; DataImportError on the first malformed record."""
    return _validate(records, _SYNAPSE, "synapse_id", source)


def validate_skeletons(records: list, source: str = "skeletons") -> list[dict]:
    """Clean skeleton documents (``nt_known`` always a list of lower-case names)."""
    return _validate(records, _SKELETON, "skeleton_id", source)


def validate_hemilineages(records: list, source: str = "hemilineages") -> list[dict]:
    """Clean hemilineage documents."""
    return _validate(records, _HEMILINEAGE, "hemi_lineage_id", source)


def _check_references(synapses, skeletons, hemilineages, sources):
    if skeletons is not None:
        skel_ids = {s["skeleton_id"] for s in skeletons}
        for i, s in enumerate(synapses):
            if s["skeleton_id"] not in skel_ids:
                raise DataImportError(f"{sources[0]} record {i} (synapse_id {s['synapse_id']}): field 'skeleton_id': "
                                      f"skeleton {s['skeleton_id']} is not in {sources[1]}")
    if hemilineages is not None and skeletons is not None:
        hl_ids = {h["hemi_lineage_id"] for h in hemilineages}
        for i, s in enumerate(skeletons):
            if s.get("hemi_lineage_id") is not None and s["hemi_lineage_id"] not in hl_ids:
                raise DataImportError(f"{sources[1]} record {i} (skeleton_id {s['skeleton_id']}): field "
                                      f"'hemi_lineage_id': hemilineage {s['hemi_lineage_id']} is not in {sources[2]}")


_INDEX = {SYNAPSES: "synapse_id", SKELETONS: "skeleton_id", HEMILINEAGES: "hemi_lineage_id"}


def import_collections(store: DocumentStore, database: str, *, synapses=None, skeletons=None, hemilineages=None,
                       overwrite: bool = False) -> ImportSummary:
    """Validate and import the given JSON exports (paths, or lists of records) into ``database``.

    Each given export replaces its collection ``synapses`` / ``skeletons`` /
    ``hemilineages``.  All records are checked (fields, duplicate ids,
    references between the given exports) before anything is written; an
    existing non-empty collection raises StoreError unless ``overwrite``.
    """
    given = {}
    sources = []
    for name, recs, validate, id_field in ((SYNAPSES, synapses, validate_synapses, "synapse_id"),
                                           (SKELETONS, skeletons, validate_skeletons, "skeleton_id"),
                                           (HEMILINEAGES, hemilineages, validate_hemilineages, "hemi_lineage_id")):
        source = name if recs is None or isinstance(recs, list) else str(recs)
        sources.append(source)
        if recs is None:
            continue
        if not isinstance(recs, list):
            recs = load_records(recs, id_field)
        given[name] = validate(recs, source)
    if not given:
        raise DataImportError("nothing to import: give synapses, skeletons and/or hemilineages")
    _check_references(given.get(SYNAPSES, []), given.get(SKELETONS), given.get(HEMILINEAGES), sources)
    if not overwrite:
        for name in given:
            if store.exists(database, name):
                raise StoreError(f"{store.url} {database}.{name}: collection exists (pass --overwrite to replace it)")
    written = []
    try:
        with store.transaction():
            for name, docs in given.items():
                coll = store.collection(database, name)
                coll.drop()
                written.append(coll)
                coll.create_index(_INDEX[name], unique=True)
                coll.insert_many(docs)
    except BaseException:
        # SQLite rolled back already; on MongoDB remove what this import wrote
        if not store.url.startswith("sqlite:"):
            for coll in written:
                coll.drop()
        raise
    return ImportSummary(*(len(given.get(n, [])) for n in (SYNAPSES, SKELETONS, HEMILINEAGES)))


def export_collections(store: DocumentStore, database: str, out_dir) -> dict[str, Path]:
    """Write ``synapses.json``, ``skeletons.json``, ``hemilineages.json`` (lists of records) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in (SYNAPSES, SKELETONS, HEMILINEAGES):
        paths[name] = write_json(out_dir / f"{name}.json", store.collection(database, name).find(), indent=1)
    return paths


def skeleton_transmitters(skeletons: list[dict]) -> dict[int, list[str]]:
    """``{skeleton_id: nt_known}``."""
    return {s["skeleton_id"]: list(s.get("nt_known") or []) for s in skeletons}
