"""Synaptic partners in memory and on disk.

In memory a partner list is a numpy structured array of :data:`PARTNER_DTYPE`
whose field names are those of Synful's synapse database::

    id, pre_z, pre_y, pre_x, post_z, post_y, post_x   int64, locations in nm (z, y, x)
    score                                              float64
    pre_seg_id, post_seg_id, pre_skel_id, post_skel_id int64, NO_ID (-1) where missing

On disk: FAFB benchmark JSON (a list of ``{"id", "id_skel_pre", "id_skel_post",
"id_segm_pre", "id_segm_post", "location_pre", "location_post", "score"}``,
locations in nm (z, y, x), ids may be null) and CSV with the database field
names (missing ids are empty cells), and Arrow tables: Parquet (``.parquet``)
and Feather v2 (``.feather``, the Arrow IPC file format) with the database field
names as columns (:func:`arrow_schema`: int64 ids and locations, float64 score,
the four optional ids null where missing).  Arrow files are written and read in
record batches of :data:`ARROW_BATCH_ROWS` rows, so a large export holds the
partner array and one batch, never a second copy of the table.  int64 ids
round-trip exactly (JSON integers are parsed as Python ints, never floats;
Arrow columns stay int64).  The Arrow reader and writer live in :mod:`synful.io.arrow` and are
importable from here.

Readers refuse, with a :class:`~synful.errors.SynfulError` naming the file,
record index and field: a value that is not a number, NaN or infinite scores
and locations, and two records with the same ``id`` (the message names the
first repeated id).  :func:`check_partners` checks an array from any source
(a store, CREMI annotations) the same way and also refuses a record that
repeats another under a different id.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from ..errors import SynfulError, read_json_file
from .files import atomic_write

__all__ = [
    "PARTNER_DTYPE",
    "PARTNER_FIELDS",
    "ID_FIELDS",
    "NO_ID",
    "empty_partners",
    "partners_from_records",
    "partners_to_records",
    "check_partners",
    "read_partners_json",
    "write_partners_json",
    "read_partners_csv",
    "write_partners_csv",
    "ARROW_SUFFIXES",
    "ARROW_BATCH_ROWS",
    "arrow_schema",
    "read_partners_arrow",
    "write_partners_arrow",
    "read_partners",
    "write_partners",
]

NO_ID = -1
ID_FIELDS = ("pre_seg_id", "post_seg_id", "pre_skel_id", "post_skel_id")
PARTNER_DTYPE = np.dtype([
    ("id", np.int64),
    ("pre_z", np.int64), ("pre_y", np.int64), ("pre_x", np.int64),
    ("post_z", np.int64), ("post_y", np.int64), ("post_x", np.int64),
    ("score", np.float64),
    ("pre_seg_id", np.int64), ("post_seg_id", np.int64),
    ("pre_skel_id", np.int64), ("post_skel_id", np.int64),
])
PARTNER_FIELDS = PARTNER_DTYPE.names
_JSON_IDS = {"id_segm_pre": "pre_seg_id", "id_segm_post": "post_seg_id",
             "id_skel_pre": "pre_skel_id", "id_skel_post": "post_skel_id"}


def empty_partners(n: int = 0) -> np.ndarray:
    """``n`` partners with zero locations, score 0 and all ids NO_ID."""
    a = np.zeros(n, dtype=PARTNER_DTYPE)
    for f in ID_FIELDS:
        a[f] = NO_ID
    return a


_INT64 = (-(2 ** 63), 2 ** 63 - 1)


def _as_int(value, where: str) -> int:
    """An int64 from an int, an integral float below 2**53 or a decimal string; SynfulError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 53:
            return int(value)
        if isinstance(value, str) and value.strip().isascii() and value.strip().lstrip("+-").isdigit() \
                and len(value.strip()) - len(value.strip().lstrip("+-")) <= 1:  # one sign, ASCII digits only
            value = int(value)
        else:
            raise SynfulError(f"{where}: expected an integer, got {value!r}")
    value = int(value)
    if not _INT64[0] <= value <= _INT64[1]:
        raise SynfulError(f"{where}: {value} does not fit in int64")
    return value


def _as_score(value, where: str) -> float:
    """A finite float (None: 0.0); SynfulError for anything else, nan and inf included."""
    if value is None:
        return 0.0
    if isinstance(value, bool):
        raise SynfulError(f"{where}: expected a number, got {value!r}")
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise SynfulError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(score):
        raise SynfulError(f"{where}: expected a finite number, got {value!r}")
    return score


def _first_duplicate(keys: np.ndarray) -> tuple[int, int] | None:
    """(earlier, later) record indices of the first record whose key (a row of ``keys``) repeats; None if unique."""
    if len(keys) < 2:
        return None
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    repeated = np.flatnonzero(first[inverse] != np.arange(len(keys)))
    if not len(repeated):
        return None
    later = int(repeated[0])
    return int(first[inverse[later]]), later


def _check_unique_ids(partners: np.ndarray, source: str) -> None:
    dup = _first_duplicate(partners["id"].reshape(-1, 1))
    if dup is not None:
        a, b = dup
        raise SynfulError(f"{source}[{b}] id: duplicate id {int(partners['id'][b])} (first at record {a})")


# a record repeats another when these are equal (whatever its id and score)
_RECORD_KEY = ("pre_z", "pre_y", "pre_x", "post_z", "post_y", "post_x") + ID_FIELDS


def check_partners(partners: np.ndarray, source: str) -> np.ndarray:
    """``partners`` (PARTNER_DTYPE) if every score is finite, every id unique and no record repeats another.

    A repeated record has the sites and the segment and skeleton ids of an
    earlier one (its ``id`` and ``score`` may differ).

    Raises :class:`SynfulError` naming ``source`` (a file, a store collection),
    the record index and the first offending value.  Returns ``partners``.
    """
    bad = np.flatnonzero(~np.isfinite(partners["score"]))
    if len(bad):
        i = int(bad[0])
        raise SynfulError(f"{source}[{i}] score: expected a finite number, got {float(partners['score'][i])!r} "
                          f"({len(bad)} record(s))")
    _check_unique_ids(partners, source)
    dup = _first_duplicate(np.stack([partners[f] for f in _RECORD_KEY], axis=1)) if len(partners) else None
    if dup is not None:
        a, b = dup
        raise SynfulError(f"{source}[{b}]: duplicate record: the sites and segment/skeleton ids of record {a} "
                          f"(ids {int(partners['id'][a])} and {int(partners['id'][b])})")
    return partners


def partners_from_records(records, source: str = "partners") -> np.ndarray:
    """Partners from dicts with the database field names; missing ids (absent or None) become NO_ID."""
    records = list(records)
    out = empty_partners(len(records))
    for i, r in enumerate(records):
        for f in PARTNER_FIELDS:
            v = r.get(f)
            where = f"{source}[{i}] {f}"
            if f == "score":
                out[i][f] = _as_score(v, where)
            elif v is None:
                if f not in ID_FIELDS:
                    raise SynfulError(f"{where}: missing")
            else:
                out[i][f] = _as_int(v, where)
    return out


def partners_to_records(partners: np.ndarray) -> list[dict]:
    """Dicts with the database field names; NO_ID ids become None; Python ints and floats."""
    recs = []
    for p in partners:
        r = {f: int(p[f]) for f in PARTNER_FIELDS if f != "score"}
        r["score"] = float(p["score"])
        for f in ID_FIELDS:
            if r[f] == NO_ID:
                r[f] = None
        recs.append(r)
    return recs


def _location(v, where: str) -> tuple[int, int, int]:
    if not isinstance(v, (list, tuple)) or len(v) != 3:
        raise SynfulError(f"{where}: expected [z, y, x] in nm, got {v!r}")
    out = []
    for c in v:
        if isinstance(c, bool) or not isinstance(c, (int, float)):
            raise SynfulError(f"{where}: expected [z, y, x] in nm, got {v!r}")
        if isinstance(c, float) and not math.isfinite(c):
            raise SynfulError(f"{where}: expected finite numbers, got {v!r}")
        c = int(round(c))
        if not _INT64[0] <= c <= _INT64[1]:
            raise SynfulError(f"{where}: {c} nm does not fit in int64, got {v!r}")
        out.append(c)
    return tuple(out)


def read_partners_json(path) -> np.ndarray:
    """Read FAFB benchmark JSON (list of links, locations in nm z/y/x); ids must be unique, numbers finite."""
    path = Path(path)
    data = read_json_file(path, "partner file")
    if not isinstance(data, list):
        raise SynfulError(f"{path}: expected a JSON list of partner links")
    out = empty_partners(len(data))
    for i, link in enumerate(data):
        where = f"{path}[{i}]"
        if not isinstance(link, dict):
            raise SynfulError(f"{where}: expected an object")
        for key in ("location_pre", "location_post"):
            if key not in link:
                raise SynfulError(f"{where} {key}: missing")
        pre = _location(link["location_pre"], f"{where} location_pre")
        post = _location(link["location_post"], f"{where} location_post")
        out[i]["pre_z"], out[i]["pre_y"], out[i]["pre_x"] = pre
        out[i]["post_z"], out[i]["post_y"], out[i]["post_x"] = post
        out[i]["id"] = _as_int(link["id"], f"{where} id") if link.get("id") is not None else i
        out[i]["score"] = _as_score(link.get("score"), f"{where} score")
        for jkey, field in _JSON_IDS.items():
            v = link.get(jkey)
            if v is not None:
                out[i][field] = _as_int(v, f"{where} {jkey}")
    _check_unique_ids(out, str(path))
    return out


def write_partners_json(partners, path) -> Path:
    """Write FAFB benchmark JSON atomically; NO_ID ids are written as null.

    ``partners`` is a PARTNER_DTYPE array or an iterable of such arrays
    (written as they come: a caller may stream them).
    """
    path = Path(path)

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            n = 0
            for chunk in _partner_chunks(partners, ARROW_BATCH_ROWS):
                links = []
                for r in partners_to_records(chunk):
                    link = {"id": r["id"]}
                    for jkey, field in _JSON_IDS.items():
                        link[jkey] = r[field]
                    link["location_pre"] = [r["pre_z"], r["pre_y"], r["pre_x"]]
                    link["location_post"] = [r["post_z"], r["post_y"], r["post_x"]]
                    link["score"] = r["score"]
                    links.append(link)
                if links:
                    # the list's items as json.dump(list, indent=1) writes them, one chunk at a time
                    f.write(("[\n" if n == 0 else ",\n") + json.dumps(links, indent=1)[2:-2])
                    n += len(links)
            f.write("\n]" if n else "[]")

    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, write)


def read_partners_csv(path) -> np.ndarray:
    """Read CSV with a header of the database field names (id columns optional, empty = missing).

    Without an ``id`` cell a record's id is its row index (0-based, header
    excluded); ids must be unique and numbers finite.
    """
    path = Path(path)
    if not path.is_file():
        raise SynfulError(f"{path}: partner file not found")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"pre_z", "pre_y", "pre_x", "post_z", "post_y", "post_x"} - set(reader.fieldnames or [])
        if missing:
            raise SynfulError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        rows = []
        for row in reader:
            rows.append({k: (None if v in ("", None) else v) for k, v in row.items()})
    for i, r in enumerate(rows):
        if r.get("id") is None:
            r["id"] = i
    out = partners_from_records(rows, str(path))
    _check_unique_ids(out, str(path))
    return out


def write_partners_csv(partners, path) -> Path:
    """Write CSV with the database field names atomically; NO_ID ids are empty cells.

    ``partners`` is a PARTNER_DTYPE array or an iterable of such arrays (streamed).
    """
    path = Path(path)

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(PARTNER_FIELDS)
            for chunk in _partner_chunks(partners, ARROW_BATCH_ROWS):
                for r in partners_to_records(chunk):
                    w.writerow(["" if r[k] is None else (repr(r[k]) if k == "score" else r[k])
                                for k in PARTNER_FIELDS])

    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, write)


# --------------------------------------------------------------------------------------
# record batches (every format streams them); the Arrow files themselves: synful.io.arrow
# --------------------------------------------------------------------------------------

ARROW_SUFFIXES = (".parquet", ".feather")
#: rows per Arrow record batch (and Parquet row group) when writing and reading
ARROW_BATCH_ROWS = 100_000


def _partner_chunks(partners, rows: int):
    """Slices of at most ``rows`` records of a PARTNER_DTYPE array or of each array an iterable yields."""
    if isinstance(partners, np.ndarray):
        partners = (partners,)
    for part in partners:
        part = np.asarray(part)
        if part.dtype != PARTNER_DTYPE:
            raise SynfulError(f"partners: expected PARTNER_DTYPE records, got dtype {part.dtype}")
        for start in range(0, len(part), rows):
            yield part[start:start + rows]


def read_partners(path) -> np.ndarray:
    """Read partners from ``.json`` (FAFB), ``.csv``, ``.parquet`` or ``.feather`` by suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        return read_partners_json(path)
    if suffix == ".csv":
        return read_partners_csv(path)
    if suffix in ARROW_SUFFIXES:
        from .arrow import read_partners_arrow

        return read_partners_arrow(path)
    raise SynfulError(f"{path}: unknown partner file type (expected .json, .csv, .parquet or .feather)")


def write_partners(partners, path, *, batch_rows: int = ARROW_BATCH_ROWS) -> Path:
    """Write partners to ``.json`` (FAFB), ``.csv``, ``.parquet`` or ``.feather`` by suffix.

    ``partners`` is a PARTNER_DTYPE array or an iterable of such arrays, e.g.
    :meth:`synful.store.Store.iter_batches`: every format is written as the
    arrays come, so a streamed export never holds the whole table.  Parquet and
    Feather are written in record batches of at most ``batch_rows`` rows (see
    :func:`write_partners_arrow`).
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        return write_partners_json(partners, path)
    if suffix == ".csv":
        return write_partners_csv(partners, path)
    if suffix in ARROW_SUFFIXES:
        from .arrow import write_partners_arrow

        return write_partners_arrow(partners, path, batch_rows=batch_rows)
    raise SynfulError(f"{path}: unknown partner file type (expected .json, .csv, .parquet or .feather)")


_ARROW_NAMES = ("arrow_schema", "read_partners_arrow", "write_partners_arrow")


def __getattr__(name):
    # the Arrow functions live in synful.io.arrow (which imports this module); loaded on first use
    if name in _ARROW_NAMES:
        from . import arrow

        return getattr(arrow, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
