"""Partner tables as Arrow files: Parquet (``.parquet``) and Feather v2 (``.feather``).

Columns are the database field names (:func:`arrow_schema`); files are written and read in
record batches of :data:`synful.io.partners.ARROW_BATCH_ROWS` rows.  The names here are
importable from :mod:`synful.io.partners` too, whose ``read_partners`` / ``write_partners``
dispatch to them by suffix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import SynfulError
from .files import atomic_write
from .partners import (_INT64, ARROW_BATCH_ROWS, ARROW_SUFFIXES, ID_FIELDS, NO_ID, PARTNER_FIELDS, _as_int, _as_score,
                       _check_unique_ids, _partner_chunks, empty_partners)

__all__ = ["arrow_schema", "read_partners_arrow", "write_partners_arrow"]

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
