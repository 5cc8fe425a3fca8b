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
Arrow columns stay int64).

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
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
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
        out.append(int(round(c)))
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
# Arrow: Parquet and Feather v2
# --------------------------------------------------------------------------------------

ARROW_SUFFIXES = (".parquet", ".feather")
#: rows per Arrow record batch (and Parquet row group) when writing and reading
ARROW_BATCH_ROWS = 100_000
_LOCATION_FIELDS = ("pre_z", "pre_y", "pre_x", "post_z", "post_y", "post_x")


def _pyarrow():
    try:
        import pyarrow
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise SynfulError("Parquet and Feather partner files need pyarrow (pip install pyarrow)") from None
    return pyarrow


def arrow_schema():
    """The Arrow schema of a partner table: the database field names, int64 ids and locations (nm),
    float64 score, ``pre_seg_id``/``post_seg_id``/``pre_skel_id``/``post_skel_id`` nullable (null: missing)."""
    pa = _pyarrow()
    fields = []
    for f in PARTNER_FIELDS:
        if f == "score":
            fields.append(pa.field(f, pa.float64(), nullable=False))
        else:
            fields.append(pa.field(f, pa.int64(), nullable=f in ID_FIELDS))
    return pa.schema(fields, metadata={b"synful": b"partners; locations in nm (z, y, x); null ids are missing"})


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


def _record_batch(pa, schema, chunk: np.ndarray):
    arrays = []
    for f in PARTNER_FIELDS:
        col = np.ascontiguousarray(chunk[f])
        mask = (col == NO_ID) if f in ID_FIELDS else None
        arrays.append(pa.array(col, type=schema.field(f).type, mask=mask))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def write_partners_arrow(partners, path, *, batch_rows: int = ARROW_BATCH_ROWS) -> Path:
    """Write partners to Parquet (``.parquet``) or Feather v2 (``.feather``) atomically, in record batches.

    ``partners`` is a PARTNER_DTYPE array or an iterable of such arrays (they
    are written as they come, so a caller may stream them); each record batch
    (Parquet row group) holds at most ``batch_rows`` rows.  NO_ID ids are
    written as null.  Feather is written uncompressed so that it can be
    memory-mapped.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in ARROW_SUFFIXES:
        raise SynfulError(f"{path}: not an Arrow partner file (expected {' or '.join(ARROW_SUFFIXES)})")
    if batch_rows < 1:
        raise SynfulError(f"batch_rows must be at least 1, got {batch_rows}")
    pa = _pyarrow()
    schema = arrow_schema()
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp):
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            with pq.ParquetWriter(tmp, schema) as writer:
                for chunk in _partner_chunks(partners, batch_rows):
                    writer.write_batch(_record_batch(pa, schema, chunk), row_group_size=batch_rows)
        else:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
                for chunk in _partner_chunks(partners, batch_rows):
                    writer.write_batch(_record_batch(pa, schema, chunk))

    return atomic_write(path, write)


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _arrow_column(pa, column, field: str, source: str, start: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, null mask) of one column of one batch; values int64 (float64 for the score).

    Refuses what the JSON/CSV readers refuse, with the same messages: a value
    that is not a number, a non-finite score or location, a non-integral id.
    """
    typ = column.type
    numeric = pa.types.is_integer(typ) or pa.types.is_floating(typ)
    if column.null_count:  # nulls become 0 here; the caller decides what a null means
        nulls = column.is_null().to_numpy(zero_copy_only=False)
        if numeric:
            column = column.fill_null(pa.scalar(0, typ))
    else:
        nulls = np.zeros(len(column), bool)
    where = lambda i: f"{source}[{start + i}] {field}"  # noqa: E731
    if not numeric:
        if len(column) and not nulls.all():
            i = _first(~nulls)
            raise SynfulError(f"{where(i)}: expected a number, got {column[i].as_py()!r} (column type {typ})")
        return np.zeros(len(column), np.float64 if field == "score" else np.int64), nulls
    if field == "score":
        values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        bad = ~np.isfinite(values)
        if bad.any():
            i = _first(bad)
            _as_score(float(values[i]), where(i))  # raises, worded as for JSON and CSV
        return values, nulls
    if pa.types.is_integer(typ):
        if pa.types.is_unsigned_integer(typ) and typ.bit_width == 64:
            raw = column.to_numpy(zero_copy_only=False)
            big = raw > np.uint64(_INT64[1])
            if big.any():
                i = _first(big)
                _as_int(int(raw[i]), where(i))  # raises: does not fit in int64
        values = column.cast(pa.int64()).to_numpy(zero_copy_only=False)
        return values.astype(np.int64, copy=False), nulls
    values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    bad = ~np.isfinite(values)
    if bad.any():
        i = _first(bad)
        raise SynfulError(f"{where(i)}: expected a finite number, got {float(values[i])!r}")
    if field in _LOCATION_FIELDS:  # nm; rounded, as the JSON reader does
        return np.round(values).astype(np.int64), nulls
    bad = (values != np.floor(values)) | (np.abs(values) >= 2 ** 53)
    if bad.any():
        i = _first(bad)
        _as_int(float(values[i]), where(i))  # raises: expected an integer
    return values.astype(np.int64), nulls


def read_partners_arrow(path, *, batch_rows: int = ARROW_BATCH_ROWS) -> np.ndarray:
    """Read partners from Parquet (``.parquet``) or Feather v2 (``.feather``), batch by batch.

    Columns are matched by the database field names (others, e.g. extra
    annotations, are ignored).  The six location columns are required; a
    missing or null ``id`` is the record's row index (as in CSV), a missing or
    null score is 0, missing or null segment/skeleton ids are NO_ID.  Integer
    columns of any width are read exactly; float columns are accepted where
    the JSON reader accepts floats.  Refused, naming the file, record and
    field: non-numbers, NaN or infinite scores and locations, null locations,
    ids beyond int64, and duplicate ids.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in ARROW_SUFFIXES:
        raise SynfulError(f"{path}: not an Arrow partner file (expected {' or '.join(ARROW_SUFFIXES)})")
    if not path.is_file():
        raise SynfulError(f"{path}: partner file not found")
    pa = _pyarrow()
    source = str(path)
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            names = pf.schema_arrow.names
            n = pf.metadata.num_rows
            cols = [f for f in PARTNER_FIELDS if f in names]
            batches = pf.iter_batches(batch_size=batch_rows, columns=cols)
        else:
            reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
            names = reader.schema.names
            n = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    except (pa.ArrowException, OSError) as e:
        kind = "Parquet" if suffix == ".parquet" else "Feather (Arrow IPC file)"
        raise SynfulError(f"{path}: not a readable {kind} file: {e}") from None
    missing = set(_LOCATION_FIELDS) - set(names)
    if missing:
        raise SynfulError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    dupes = sorted({f for f in names if names.count(f) > 1 and f in PARTNER_FIELDS})
    if dupes:
        raise SynfulError(f"{path}: column(s) {', '.join(dupes)} appear more than once")
    out = empty_partners(n)
    start = 0
    try:
        for batch in batches:
            m = batch.num_rows
            if start + m > n:
                raise SynfulError(f"{path}: more rows than its metadata says ({n})")
            rows = slice(start, start + m)
            for f in PARTNER_FIELDS:
                if f not in names:
                    if f == "id":
                        out["id"][rows] = np.arange(start, start + m)
                    continue
                values, nulls = _arrow_column(pa, batch.column(batch.schema.get_field_index(f)), f, source, start)
                if nulls.any():
                    if f in _LOCATION_FIELDS:
                        raise SynfulError(f"{source}[{start + _first(nulls)}] {f}: missing")
                    if f == "id":
                        values = np.where(nulls, np.arange(start, start + m), values)
                    elif f in ID_FIELDS:
                        values = np.where(nulls, NO_ID, values)
                out[f][rows] = values
            start += m
    except pa.ArrowException as e:
        raise SynfulError(f"{path}: not a readable Arrow table: {e}") from None
    if start != n:
        raise SynfulError(f"{path}: {start} rows read, its metadata says {n}")
    _check_unique_ids(out, source)
    return out


def read_partners(path) -> np.ndarray:
    """Read partners from ``.json`` (FAFB), ``.csv``, ``.parquet`` or ``.feather`` by suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        return read_partners_json(path)
    if suffix == ".csv":
        return read_partners_csv(path)
    if suffix in ARROW_SUFFIXES:
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
        return write_partners_arrow(partners, path, batch_rows=batch_rows)
    raise SynfulError(f"{path}: unknown partner file type (expected .json, .csv, .parquet or .feather)")
