"""The partner store's interface and the PARTNER_DTYPE conversions both of its backends use."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterator

import numpy as np

from ..db import StoreError
from ..io.partners import ID_FIELDS, NO_ID, PARTNER_DTYPE, PARTNER_FIELDS, empty_partners, write_partners

#: ``_id`` of the run record document inside a MongoDB partner collection (partner ids are integers)
RUN_RECORD_ID = "synful_run"
#: partners per batch of :meth:`Store.export` (about 10 MB as PARTNER_DTYPE)
EXPORT_BATCH_ROWS = 100_000
#: rows converted from Python objects at a time (a fetched row costs ~0.7 kB as Python objects, 96 B as a record)
FETCH_ROWS = 4096


def as_partners(partners) -> np.ndarray:
    a = np.asarray(partners)
    if a.dtype != PARTNER_DTYPE:
        raise StoreError(f"partners must be a numpy array of PARTNER_DTYPE, got dtype {a.dtype}")
    if a.ndim != 1:
        a = a.reshape(-1)
    if len(np.unique(a["id"])) != len(a):
        raise StoreError("partners hold duplicate ids")
    if not np.all(np.isfinite(a["score"])):
        raise StoreError("partners hold a score that is NaN or infinite")
    return a


def check_site(site: str) -> str:
    if site not in ("pre", "post"):
        raise StoreError(f"site must be 'pre' or 'post', got {site!r}")
    return site


def check_batch_rows(batch_rows) -> int:
    if int(batch_rows) < 1:
        raise StoreError(f"batch_rows must be at least 1, got {batch_rows}")
    return int(batch_rows)


def optional_ids(values, n: int, what: str):
    if values is None:
        return None
    v = np.asarray(values, dtype=np.int64).reshape(-1)
    if len(v) != n:
        raise StoreError(f"{len(v)} {what} for {n} partner ids")
    return v.tolist()


def roi_bounds(roi):
    begin = tuple(int(v) for v in roi.begin)
    end = tuple(int(v) for v in roi.end)
    return begin, end



def skel_id_sides(ids, pre_skel_ids, post_skel_ids) -> tuple[list[int], list[tuple[str, list]]]:
    """``(ids, [(field, values), ...])`` of a :meth:`Store.set_skel_ids` call: the sides given, NO_ID as None."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1).tolist()
    sides = [(f, [None if x == NO_ID else x for x in v])
             for f, v in (("pre_skel_id", optional_ids(pre_skel_ids, len(ids), "pre skeleton ids")),
                          ("post_skel_id", optional_ids(post_skel_ids, len(ids), "post skeleton ids")))
             if v is not None]
    return ids, sides


def partner_rows(partners: np.ndarray, block_id: int) -> list[tuple]:
    """Rows of Python ints/floats in PARTNER_FIELDS order plus block_id; NO_ID -> None."""
    cols = []
    for f in PARTNER_FIELDS:
        v = partners[f].tolist()
        if f in ID_FIELDS:
            v = [None if x == NO_ID else x for x in v]
        cols.append(v)
    cols.append([block_id] * len(partners))
    return list(zip(*cols))


def partners_from_rows(rows) -> np.ndarray:
    """PARTNER_DTYPE records from rows in PARTNER_FIELDS order (None ids -> NO_ID)."""
    out = empty_partners(len(rows))
    if not rows:
        return out
    cols = list(zip(*rows))
    for f, col in zip(PARTNER_FIELDS, cols):
        if f in ID_FIELDS:
            col = [NO_ID if x is None else x for x in col]
        out[f] = np.array(col, dtype=PARTNER_DTYPE[f])
    return out


def partners_from_cursor(cur, limit: int) -> np.ndarray:
    """At most ``limit`` rows of ``cur`` as PARTNER_DTYPE, fetched a few thousand at a time (bounded memory)."""
    out = empty_partners(limit)
    n = 0
    while n < limit:
        rows = cur.fetchmany(min(FETCH_ROWS, limit - n))
        if not rows:
            break
        out[n:n + len(rows)] = partners_from_rows(rows)
        n += len(rows)
    return out[:n].copy() if n < limit else out


def iter_keyset_pages(read_page, batch_rows: int) -> Iterator[np.ndarray]:
    """Keyset pagination on the partner id: the batches ``read_page(last, batch_rows)`` returns as
    ``(id-sorted partners with id > last (last None: from the start), rows read)``, until a short page."""
    last = None
    while True:
        batch, n_read = read_page(last, batch_rows)
        if len(batch):
            yield batch
        if n_read < batch_rows:
            return
        last = int(batch["id"][-1])


class Store(ABC):
    """A collection of partners: create, write per block, query, count, iterate, export, drop.

    Subclasses implement the backend; every method takes and returns
    :data:`PARTNER_DTYPE` arrays (locations nm, (z, y, x)).  Use as a context
    manager or call :meth:`close`.
    """

    #: the store as a printable string (URL without credentials and collection)
    name: str = ""
    collection: str = ""

    @abstractmethod
    def create(self) -> None:
        """Create the collection and its indexes (block, post site, pre site); idempotent."""
        ...

    @abstractmethod
    def write_block(self, block_id: int, partners: np.ndarray) -> None:
        """Replace everything block ``block_id`` wrote with ``partners`` (ids unique)."""
        ...

    @abstractmethod
    def set_skel_ids(self, ids, pre_skel_ids=None, post_skel_ids=None) -> None:
        """Set ``pre_skel_id`` / ``post_skel_id`` of the partners with these ``id`` (NO_ID: missing).

        ``None`` for one side leaves that side as it is (a blockwise mapping
        sets the two sides in different blocks).  Touches nothing else
        (locations, scores, ``block_id`` stay); ids not in the collection are
        skipped.  Idempotent: a rerun with the same values leaves the
        collection as it was.
        """
        ...

    @abstractmethod
    def query(self, roi=None, *, site: str = "post") -> np.ndarray:
        """Partners whose ``site`` (``"post"`` or ``"pre"``) lies in ``roi`` (a funlib Roi in nm, half-open;
        None: all), sorted by id."""
        ...

    @abstractmethod
    def iter_batches(self, batch_rows: int = 100_000, roi=None, *, site: str = "post") -> Iterator[np.ndarray]:
        """The partners of :meth:`query` as PARTNER_DTYPE arrays of at most ``batch_rows`` records, in id order.

        Streams: only one batch is held at a time (SQLite: keyset pagination on
        the primary key, one short read per batch; MongoDB: the same on the
        indexed field ``id``, sorted by the server), so a run of any size can be
        exported.  Partners written while
        iterating are seen if their id is above the last one yielded.
        """
        ...

    @abstractmethod
    def count(self) -> int:
        """Number of partners in the collection (0 if it does not exist)."""
        ...

    @abstractmethod
    def block_ids(self) -> np.ndarray:
        """Sorted ids of the blocks that wrote at least one partner."""
        ...

    @abstractmethod
    def drop(self) -> None:
        """Delete the collection and everything in it, its run record included."""
        ...

    @abstractmethod
    def run_record(self) -> dict | None:
        """The record of the run that owns the collection (see :meth:`claim_run`); None when unclaimed."""
        ...

    @abstractmethod
    def claim_run(self, record: dict) -> dict | None:
        """Make the run ``record["run_id"]`` the owner of the collection, atomically.

        Stores ``record`` (a JSON-able dict) when the collection has no record
        or one with the same ``run_id``, and returns the record found before
        (None: it was unclaimed).  When another run owns the collection nothing
        is written and that run's record is returned: compare its ``run_id``.
        """
        ...

    @abstractmethod
    def identity(self) -> dict:
        """Where the partners go, without credentials: ``backend``, ``path`` (SQLite, absolute) or
        ``hosts`` and ``database`` (MongoDB), and ``collection``."""
        ...

    def check_reachable(self) -> None:
        """Raise :class:`StoreError` at once when the store is known to be gone (no waiting)."""

    def close(self) -> None:
        """Release the connection."""

    def __iter__(self) -> Iterator[np.void]:
        """Iterate over the partners (PARTNER_DTYPE records) sorted by id, batch by batch."""
        for batch in self.iter_batches():
            yield from batch

    def __len__(self) -> int:
        return self.count()

    def export(self, path, *, batch_rows: int = EXPORT_BATCH_ROWS) -> Path:
        """Write all partners to ``path`` (``.json`` FAFB benchmark, ``.csv``, ``.parquet``, ``.feather``), atomically.

        Streams through :meth:`iter_batches`: memory holds one batch of
        ``batch_rows`` partners (and its Arrow record batch), never the run.
        """
        return write_partners(self.iter_batches(batch_rows), path, batch_rows=batch_rows)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"{type(self).__name__}({self.name}, collection={self.collection})"

