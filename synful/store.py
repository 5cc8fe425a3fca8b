"""Per-run result collections of synaptic partners: MongoDB or SQLite.

One narrow interface, two backends chosen by URL:

- ``sqlite:///path`` (the default, no server): one table per collection in an
  SQLite file; a relative path resolves against ``base_dir`` (the run
  directory).  ``sqlite:////abs/path`` is absolute.
- ``mongodb://host:port`` / ``mongodb+srv://...`` through pymongo: one
  collection per run in ``database``.

Records carry Synful's synapse-database fields (see
:data:`synful.io.partners.PARTNER_DTYPE`; locations in nm, (z, y, x)) plus
``block_id``, the extraction block that wrote them.  The partner ``id`` is
deterministic (derived from the post site's voxel) and is the primary key
(``_id`` in MongoDB, ``INTEGER PRIMARY KEY`` in SQLite), so concurrent
workers and reruns can never duplicate a partner.  Missing ids (NO_ID) are
stored as null; int64 ids round-trip exactly.

:meth:`Store.write_block` replaces what a block wrote before: in SQLite in one
transaction; in MongoDB by upserting the new partners and then deleting that
block's stale ones, so a reader never sees the block empty and a writer killed
in between leaves at worst stale extras that the rerun of the (not done) block
removes.

Run record: a collection belongs to one extraction run.  :meth:`Store.claim_run`
stores the run's record (its ``run_id`` and what it was computed from) with the
collection -- in MongoDB as the document ``_id = "synful_run"`` of the
collection itself (so dropping the collection by hand drops the record too), in
SQLite in the companion table ``<collection>__run`` -- and refuses to replace
another run's record.  Partner queries and counts never see it.

Reading never writes: an SQLite store is opened for writing only on the first
create / write / drop / claim; reads before that use a read-only connection
(see :class:`SQLiteStore`), so archived runs on read-only storage can be read.

Errors surface with their cause: a full disk is reported as SQLite's
``database or disk is full`` with the file's path.  A MongoDB server that stops
answering fails every operation of this process at once after
:data:`OUTAGE_BUDGET_S` seconds, so a blockwise run fails within about half a
minute instead of waiting out a timeout per block.

Credentials: with ``credentials_file`` or ``credentials_env`` the whole MongoDB
URL (with user and password) is read from that file or environment variable.
URLs are only ever shown with their user info removed (:func:`redact_url`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import time
from abc import ABC, abstractmethod
from contextlib import suppress
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import SynfulError
from .io.partners import ID_FIELDS, NO_ID, PARTNER_DTYPE, PARTNER_FIELDS, empty_partners, write_partners

__all__ = [
    "StoreError",
    "Store",
    "SQLiteStore",
    "MongoStore",
    "open_store",
    "open_run_store",
    "run_collection_name",
    "redact_url",
]

#: seconds to wait for a MongoDB server before failing
CONNECT_TIMEOUT_S = 5.0
#: seconds a MongoDB reply may take on an open connection (a hung server must not block a worker forever)
SOCKET_TIMEOUT_S = 15.0
#: seconds a MongoDB server may stay unreachable; after that every operation of the process fails at once
OUTAGE_BUDGET_S = 5.0
#: ``_id`` of the run record document inside a MongoDB partner collection (partner ids are integers)
RUN_RECORD_ID = "synful_run"
_COORDS = ("pre_z", "pre_y", "pre_x", "post_z", "post_y", "post_x")
#: partners per batch of :meth:`Store.export` (about 10 MB as PARTNER_DTYPE)
EXPORT_BATCH_ROWS = 100_000
_COLLECTION_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


class StoreError(SynfulError):
    """The result store cannot be opened, reached or written; the message names the store (never credentials)."""


_URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")
# RFC 3986: userinfo = *( unreserved / pct-encoded / sub-delims / ":" ); a raw '@', '/', '?', '#' or space is not in it
_USERINFO = re.compile(r"[A-Za-z0-9._~%!$&'()*+,;=:-]*")
_HOST = r"(?:[A-Za-z0-9._~%-]+|\[[0-9A-Fa-f:.%]+\])(?::\d{1,5})?"
_HOSTS = re.compile(rf"{_HOST}(?:,{_HOST})*")  # mongodb://h1:27017,h2:27017
_WITHHELD = "<withheld: credentials or hosts cannot be parsed>"
_SECRET_OPTION = re.compile(r"(?i)([?&][^=&#]*(?:password|secret|token|authmechanismproperties)[^=&#]*=)[^&#]*")


def _redact_one(url: str) -> str:
    m = _URL_SCHEME.match(url)
    scheme, rest = m.group(1), url[m.end():]
    if scheme.lower() in ("sqlite", "file") and rest.startswith("/"):
        return url  # no authority: a path, never credentials
    withheld = f"{scheme}://{_WITHHELD}"
    userinfo = None
    if "@" in rest:
        # the LAST '@' ends the credentials, so an unescaped '@' or '/' in a password cannot split it
        userinfo, _, rest = rest.rpartition("@")
        if not _USERINFO.fullmatch(userinfo):
            return withheld  # e.g. a raw '@' or '/' in the password: which part is the host is a guess
    hosts, tail = re.match(r"([^/?#]*)(.*)", rest, re.DOTALL).groups()
    if not _HOSTS.fullmatch(hosts):
        return withheld  # e.g. mongodb://user:secret with no '@': the 'port' would be the password
    tail = _SECRET_OPTION.sub(r"\1***", tail)
    return f"{scheme}://{'***@' if userinfo is not None else ''}{hosts}{tail}"


def redact_url(url: str) -> str:
    """``url`` safe to print and log: ``scheme://***@hosts/path?options`` without the credentials.

    The URL is parsed, not pattern-matched: the credentials end at the last ``@``, must be valid
    RFC 3986 userinfo (percent-escaped), and the hosts after them must be ``host[:port]`` items.
    Anything else -- an unescaped ``@`` or ``/`` in a password, a space, ``mongodb://user:secret``
    without ``@`` -- prints as ``scheme://<withheld: ...>``: a URL whose credentials cannot be parsed
    is never shown.  Values of options named like a password, secret or token become ``***``.
    ``sqlite:///path`` URLs are returned unchanged.  Text that does not start with a URL (an error
    message) keeps its words, and every URL in it (up to the next whitespace) is redacted; after a
    withheld one the rest of its line goes too (an unescaped space may have split the URL).
    """
    text = str(url)
    if _URL_SCHEME.match(text):
        return _redact_one(text)  # the whole string is the URL, spaces included
    out, pos = [], 0
    while (m := _URL_IN_TEXT.search(text, pos)) is not None:
        red, end = _redact_one(m.group(0)), m.end()
        if red.endswith(_WITHHELD):
            end = text.find("\n", end) if "\n" in text[end:] else len(text)
        out += [text[pos:m.start()], red]
        pos = end
    return "".join(out + [text[pos:]])


def _check_collection(name: str) -> str:
    if not isinstance(name, str) or not _COLLECTION_RE.fullmatch(name):
        raise StoreError(f"collection name {name!r}: use letters, digits, '_', '-' or '.' (not starting with a digit)")
    return name


def _as_partners(partners) -> np.ndarray:
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


def _check_site(site: str) -> str:
    if site not in ("pre", "post"):
        raise StoreError(f"site must be 'pre' or 'post', got {site!r}")
    return site


def _check_batch_rows(batch_rows) -> int:
    if int(batch_rows) < 1:
        raise StoreError(f"batch_rows must be at least 1, got {batch_rows}")
    return int(batch_rows)


def _optional_ids(values, n: int, what: str):
    if values is None:
        return None
    v = np.asarray(values, dtype=np.int64).reshape(-1)
    if len(v) != n:
        raise StoreError(f"{len(v)} {what} for {n} partner ids")
    return v.tolist()


def _roi_bounds(roi):
    begin = tuple(int(v) for v in roi.begin)
    end = tuple(int(v) for v in roi.end)
    return begin, end


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


# --------------------------------------------------------------------------------------
# SQLite
# --------------------------------------------------------------------------------------

class SQLiteStore(Store):
    """Partners in a table of an SQLite file (WAL mode: many readers, writers take turns).

    The writable connection is opened on the first :meth:`create`,
    :meth:`write_block`, :meth:`drop` or :meth:`claim_run`; reads before that
    open a read-only connection per call and never create, lock or modify a
    file, so a read-only (archived) run can be queried and exported:

    - no file: an empty collection (nothing is created);
    - a ``-wal`` file beside it: a writer is attached (or died with committed
      transactions in the log), so the file is read through the log
      (``mode=ro``; SQLite may create the ``-shm`` index if it is missing);
    - no ``-wal`` file: no writer is attached (a writer's connection keeps its
      log until it closes), so the file is opened ``immutable`` (no lock, no
      ``-wal`` / ``-shm``).  Should a writer start meanwhile (the file or log
      changes during the read), the read is repeated through the log.

    Errors name the file and keep SQLite's own message (e.g. ``database or
    disk is full``); a failed write leaves the block as it was.
    """

    def __init__(self, path, collection: str, *, timeout: float = 600.0):
        self.path = Path(path)
        self.collection = _check_collection(collection)
        self.name = f"sqlite:///{self.path}"
        self._table = '"' + self.collection.replace('"', '""') + '"'
        self._run_table = '"' + (self.collection + "__run").replace('"', '""') + '"'
        self._timeout = timeout
        self._conn: sqlite3.Connection | None = None  # the writable connection, opened on the first write
        if self.path.exists() and not self.path.is_file():
            raise StoreError(f"{self.name}: not a file")

    # ---- connections

    def _writer(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(str(self.path), timeout=self._timeout, isolation_level=None)
            except (OSError, sqlite3.Error) as e:
                raise StoreError(f"{self.name}: cannot open the SQLite store for writing: {e}") from None
            try:
                self._set_wal(conn, self._timeout)
                conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as e:
                conn.close()
                raise StoreError(f"{self.name}: cannot open the SQLite store for writing: {e}") from None
            self._conn = conn
        return self._conn

    @staticmethod
    def _set_wal(conn, timeout: float):
        # two processes switching a new file to WAL at once: SQLite answers "database is locked" at
        # once instead of waiting for the busy timeout, so wait here
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _file_state(self):
        """(size, mtime) of the file and whether its ``-wal`` exists; None when there is no file."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_size, st.st_mtime_ns, self.path.with_name(self.path.name + "-wal").exists()

    def _read(self, fn, default):
        """``fn(connection)`` on the writable connection if open, else on a read-only one (see the class)."""
        if self._conn is not None:
            return self._call(fn, self._conn)
        for through_log in (False, True):
            before = self._file_state()
            if before is None:
                return default
            immutable = not (through_log or before[2])
            # as_uri percent-encodes the path; immutable: read as-is, without locks or side files
            uri = self.path.resolve().as_uri() + ("?mode=ro&immutable=1" if immutable else "?mode=ro")
            try:
                conn = sqlite3.connect(uri, uri=True, timeout=self._timeout, isolation_level=None)
            except sqlite3.Error as e:
                raise StoreError(f"{self.name}: cannot open the SQLite store read-only: {e}") from None
            try:
                result = self._call(fn, conn)
            finally:
                conn.close()
            if not immutable or self._file_state() == before:
                return result
        return result

    def _call(self, fn, conn):
        try:
            return fn(conn)
        except sqlite3.Error as e:
            hint = ""
            if self._conn is None and "unable to open" in str(e):
                hint = (f" (reading a store whose write-ahead log {self.path.name}-wal was left behind needs "
                        f"write access to {self.path.parent} once, to fold the log into the file)")
            raise StoreError(f"{self.name} [{self.collection}]: {e}{hint}") from None

    def _exec(self, sql, params=()):
        conn = self._writer()
        try:
            return conn.execute(sql, params)
        except sqlite3.Error as e:
            raise StoreError(f"{self.name} [{self.collection}]: {e}") from None

    def _transaction(self, what: str, fn):
        """``fn(connection)`` in one write transaction; on error, roll back and raise SQLite's own error.

        SQLite may already have rolled the transaction back itself (a full disk does): then a ROLLBACK
        would fail with "no transaction is active" and hide the cause, so it is only sent when one is open.
        """
        conn = self._writer()
        try:
            # BEGIN IMMEDIATE takes the write lock up front, so concurrent writers queue instead of deadlocking
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
                return result
            except BaseException:
                if conn.in_transaction:
                    with suppress(sqlite3.Error):  # the first error is the one to report
                        conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise StoreError(f"{self.name} [{self.collection}]: {what} failed: {e}") from None

    @staticmethod
    def _has_table(conn, name: str) -> bool:
        return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None

    # ---- the collection

    def create(self) -> None:
        cols = ", ".join(f"{f} INTEGER" for f in PARTNER_FIELDS if f not in ("id", "score"))
        stem = self.collection.replace('"', "")

        def make(conn):
            conn.execute(f"CREATE TABLE IF NOT EXISTS {self._table} (id INTEGER PRIMARY KEY, {cols}, score REAL, "
                         f"block_id INTEGER NOT NULL)")
            conn.execute(f'CREATE INDEX IF NOT EXISTS "{stem}__block" ON {self._table} (block_id)')
            conn.execute(f'CREATE INDEX IF NOT EXISTS "{stem}__post" ON {self._table} (post_z, post_y, post_x)')
            conn.execute(f'CREATE INDEX IF NOT EXISTS "{stem}__pre" ON {self._table} (pre_z, pre_y, pre_x)')

        self._transaction("creating the collection", make)

    def write_block(self, block_id: int, partners: np.ndarray) -> None:
        partners = _as_partners(partners)
        fields = list(PARTNER_FIELDS) + ["block_id"]
        rows = _rows(partners, int(block_id))
        sql = f"INSERT OR REPLACE INTO {self._table} ({', '.join(fields)}) VALUES ({', '.join('?' * len(fields))})"

        def write(conn):
            conn.execute(f"DELETE FROM {self._table} WHERE block_id = ?", (int(block_id),))
            conn.executemany(sql, rows)

        self._transaction(f"writing block {block_id}", write)

    def set_skel_ids(self, ids, pre_skel_ids=None, post_skel_ids=None) -> None:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1).tolist()
        sides = [(f, v) for f, v in (("pre_skel_id", _optional_ids(pre_skel_ids, len(ids), "pre skeleton ids")),
                                     ("post_skel_id", _optional_ids(post_skel_ids, len(ids), "post skeleton ids")))
                 if v is not None]
        if not ids or not sides:
            return
        rows = list(zip(*[[None if x == NO_ID else x for x in v] for _, v in sides], ids))
        sql = f"UPDATE {self._table} SET {', '.join(f'{f} = ?' for f, _ in sides)} WHERE id = ?"

        def write(conn):
            conn.executemany(sql, rows)

        self._transaction("setting skeleton ids", write)

    @staticmethod
    def _roi_where(roi, site: str):
        if roi is None:
            return [], []
        begin, end = _roi_bounds(roi)
        site = _check_site(site)
        return ([f"{site}_{a} >= ? AND {site}_{a} < ?" for a in "zyx"],
                [v for pair in zip(begin, end) for v in pair])

    def query(self, roi=None, *, site: str = "post") -> np.ndarray:
        conds, params = self._roi_where(roi, site)
        where = " WHERE " + " AND ".join(conds) if conds else ""

        def read(conn):
            if not self._has_table(conn, self.collection):
                return empty_partners(0)
            cur = conn.execute(f"SELECT {', '.join(PARTNER_FIELDS)} FROM {self._table}{where} ORDER BY id", params)
            chunks = []  # converted a few thousand rows at a time: never the whole run as Python objects
            while rows := cur.fetchmany(_FETCH_ROWS):
                chunks.append(_from_rows(rows))
            return np.concatenate(chunks) if chunks else empty_partners(0)

        return self._read(read, empty_partners(0))

    def iter_batches(self, batch_rows: int = 100_000, roi=None, *, site: str = "post") -> Iterator[np.ndarray]:
        batch_rows = _check_batch_rows(batch_rows)
        conds, params = self._roi_where(roi, site)
        last = None
        while True:
            c, p = list(conds), list(params)
            if last is not None:
                c.append("id > ?")
                p.append(last)
            where = " WHERE " + " AND ".join(c) if c else ""
            sql = f"SELECT {', '.join(PARTNER_FIELDS)} FROM {self._table}{where} ORDER BY id LIMIT ?"

            def read(conn, sql=sql, p=tuple(p) + (batch_rows,)):
                if not self._has_table(conn, self.collection):
                    return empty_partners(0)
                return _from_cursor(conn.execute(sql, p), batch_rows)

            batch = self._read(read, empty_partners(0))
            if len(batch):
                yield batch
            if len(batch) < batch_rows:
                return
            last = int(batch["id"][-1])

    def count(self) -> int:
        def read(conn):
            if not self._has_table(conn, self.collection):
                return 0
            return int(conn.execute(f"SELECT COUNT(*) FROM {self._table}").fetchone()[0])

        return self._read(read, 0)

    def block_ids(self) -> np.ndarray:
        def read(conn):
            if not self._has_table(conn, self.collection):
                return np.zeros(0, dtype=np.int64)
            rows = conn.execute(f"SELECT DISTINCT block_id FROM {self._table} ORDER BY block_id").fetchall()
            return np.array([r[0] for r in rows], dtype=np.int64)

        return self._read(read, np.zeros(0, dtype=np.int64))

    def drop(self) -> None:
        def drop(conn):
            conn.execute(f"DROP TABLE IF EXISTS {self._table}")
            conn.execute(f"DROP TABLE IF EXISTS {self._run_table}")

        self._transaction("dropping the collection", drop)

    def run_record(self) -> dict | None:
        def read(conn):
            if not self._has_table(conn, self.collection + "__run"):
                return None
            row = conn.execute(f"SELECT record FROM {self._run_table} WHERE key = 0").fetchone()
            return None if row is None else json.loads(row[0])

        return self._read(read, None)

    def claim_run(self, record: dict) -> dict | None:
        text = json.dumps(record, sort_keys=True)

        def claim(conn):
            conn.execute(f"CREATE TABLE IF NOT EXISTS {self._run_table} "
                         f"(key INTEGER PRIMARY KEY, record TEXT NOT NULL)")
            row = conn.execute(f"SELECT record FROM {self._run_table} WHERE key = 0").fetchone()
            old = None if row is None else json.loads(row[0])
            if old is None or old.get("run_id") == record["run_id"]:
                conn.execute(f"INSERT OR REPLACE INTO {self._run_table} (key, record) VALUES (0, ?)", (text,))
            return old

        return self._transaction("recording the run", claim)

    def identity(self) -> dict:
        return {"backend": "sqlite", "path": str(self.path.resolve()), "collection": self.collection}

    def close(self) -> None:
        conn, self._conn = getattr(self, "_conn", None), None
        if conn is not None:
            conn.close()


def _rows(partners: np.ndarray, block_id: int) -> list[tuple]:
    """Rows of Python ints/floats in PARTNER_FIELDS order plus block_id; NO_ID -> None."""
    cols = []
    for f in PARTNER_FIELDS:
        v = partners[f].tolist()
        if f in ID_FIELDS:
            v = [None if x == NO_ID else x for x in v]
        cols.append(v)
    cols.append([block_id] * len(partners))
    return list(zip(*cols))


#: rows converted from Python objects at a time (a fetched row costs ~0.7 kB as Python objects, 96 B as a record)
_FETCH_ROWS = 4096


def _from_cursor(cur, limit: int) -> np.ndarray:
    """At most ``limit`` rows of ``cur`` as PARTNER_DTYPE, fetched a few thousand at a time (bounded memory)."""
    out = empty_partners(limit)
    n = 0
    while n < limit:
        rows = cur.fetchmany(min(_FETCH_ROWS, limit - n))
        if not rows:
            break
        out[n:n + len(rows)] = _from_rows(rows)
        n += len(rows)
    return out[:n].copy() if n < limit else out


def _from_rows(rows) -> np.ndarray:
    out = empty_partners(len(rows))
    if not rows:
        return out
    cols = list(zip(*rows))
    for f, col in zip(PARTNER_FIELDS, cols):
        if f in ID_FIELDS:
            col = [NO_ID if x is None else x for x in col]
        out[f] = np.array(col, dtype=PARTNER_DTYPE[f])
    return out


# --------------------------------------------------------------------------------------
# MongoDB
# --------------------------------------------------------------------------------------

class MongoStore(Store):
    """Partners in a MongoDB collection; the partner id is the document ``_id`` (and also field ``id``).

    The run record is the document ``_id = "synful_run"`` of the same collection.  Replies may take
    :data:`SOCKET_TIMEOUT_S`; once the server has been unreachable for :data:`OUTAGE_BUDGET_S`
    seconds (counted from the start of the first operation that found it gone), every further
    operation of this object fails at once with :class:`StoreError`, so the blocks of a run fail
    fast instead of each waiting out its own timeout; a successful operation within the budget
    resets it.
    """

    def __init__(self, url: str, database: str, collection: str, *, timeout: float = CONNECT_TIMEOUT_S):
        import pymongo
        from pymongo.errors import PyMongoError

        self.collection = _check_collection(collection)
        self.database = database
        self.name = redact_url(url)
        try:
            self._client = pymongo.MongoClient(url, serverSelectionTimeoutMS=int(timeout * 1000),
                                               connectTimeoutMS=int(timeout * 1000),
                                               socketTimeoutMS=int(max(SOCKET_TIMEOUT_S, timeout) * 1000))
            # fail fast: the client connects lazily, so ask the server now
            self._client.admin.command("ping")
        except PyMongoError as e:
            self._client = None
            raise StoreError(f"cannot reach MongoDB at {self.name} within {timeout:g} s "
                             f"({type(e).__name__}: {self._clean(e)})") from None
        except (ValueError, TypeError) as e:  # malformed URL
            self._client = None
            raise StoreError(f"invalid MongoDB URL {self.name}: {self._clean(e)}") from None
        self._url = url
        self._col = self._client[database][self.collection]
        self._down_since: float | None = None  # monotonic start of the first operation that found the server gone
        self._down_cause = ""

    def _clean(self, e) -> str:
        """An exception message without credentials and trimmed to its first line."""
        text = str(e).splitlines()[0] if str(e) else ""
        text = text.split(", Timeout:")[0]
        return redact_url(text)[:300]

    def check_reachable(self) -> None:
        if self._down_since is not None:
            gone = time.monotonic() - self._down_since
            if gone > OUTAGE_BUDGET_S:
                raise StoreError(f"{self.name} [{self.database}.{self.collection}]: MongoDB has been unreachable "
                                 f"for {gone:.0f} s ({self._down_cause}); giving up (rerun once it is back: "
                                 f"blocks that failed are not marked done)")

    def _guard(self, what: str, fn, *args, **kwargs):
        from pymongo.errors import ConnectionFailure, PyMongoError

        self.check_reachable()
        t0 = time.monotonic()
        try:
            result = fn(*args, **kwargs)
        except ConnectionFailure as e:  # also AutoReconnect, NetworkTimeout, ServerSelectionTimeoutError
            if self._down_since is None:
                self._down_since, self._down_cause = t0, f"{type(e).__name__}: {self._clean(e)}"
            raise StoreError(f"{self.name} [{self.database}.{self.collection}]: {what} failed "
                             f"({type(e).__name__}: {self._clean(e)})") from None
        except PyMongoError as e:
            raise StoreError(f"{self.name} [{self.database}.{self.collection}]: {what} failed "
                             f"({type(e).__name__}: {self._clean(e)})") from None
        self._down_since = None
        return result

    def create(self) -> None:
        import pymongo

        def make():
            db = self._client[self.database]
            if self.collection not in db.list_collection_names():
                with suppress(pymongo.errors.CollectionInvalid):  # created meanwhile by another worker
                    db.create_collection(self.collection)
            self._col.create_index([("block_id", pymongo.ASCENDING)])
            self._col.create_index([("id", pymongo.ASCENDING)])  # iter_batches pages by id
            for side in ("post", "pre"):  # pre: queries by pre site (blockwise skeleton mapping)
                self._col.create_index([(f"{side}_z", pymongo.ASCENDING), (f"{side}_y", pymongo.ASCENDING),
                                        (f"{side}_x", pymongo.ASCENDING)])

        self._guard("creating the collection", make)

    def write_block(self, block_id: int, partners: np.ndarray) -> None:
        import pymongo
        from pymongo.errors import BulkWriteError

        partners = _as_partners(partners)
        block_id = int(block_id)
        docs = []
        for row in _rows(partners, block_id):
            d = dict(zip(PARTNER_FIELDS + ("block_id",), row))
            d["_id"] = d["id"]
            docs.append(d)

        def write():
            if docs:
                try:
                    # fast path for a fresh block; ids already present (rerun, other blocking) are replaced below
                    self._col.insert_many(docs, ordered=False)
                except BulkWriteError as e:
                    errors = e.details.get("writeErrors", [])
                    if any(err.get("code") != 11000 for err in errors):
                        raise
                    self._col.bulk_write([pymongo.ReplaceOne({"_id": docs[err["index"]]["_id"]},
                                                             docs[err["index"]], upsert=True)
                                          for err in errors], ordered=False)
            # stale = what this block wrote before and did not write now; deleted by primary key, the one
            # delete form every wire-compatible server implements identically
            keep = {d["_id"] for d in docs}
            stale = [d["_id"] for d in self._col.find({"block_id": block_id}, {"_id": 1}) if d["_id"] not in keep]
            if stale:
                self._col.delete_many({"_id": {"$in": stale}})

        self._guard(f"writing block {block_id}", write)

    def set_skel_ids(self, ids, pre_skel_ids=None, post_skel_ids=None) -> None:
        import pymongo

        ids = np.asarray(ids, dtype=np.int64).reshape(-1).tolist()
        sides = [(f, v) for f, v in (("pre_skel_id", _optional_ids(pre_skel_ids, len(ids), "pre skeleton ids")),
                                     ("post_skel_id", _optional_ids(post_skel_ids, len(ids), "post skeleton ids")))
                 if v is not None]
        if not ids or not sides:
            return
        ops = [pymongo.UpdateOne({"_id": i}, {"$set": {f: None if v[k] == NO_ID else v[k] for f, v in sides}})
               for k, i in enumerate(ids)]
        self._guard("setting skeleton ids", self._col.bulk_write, ops, ordered=False)

    @staticmethod
    def _filter(roi, site: str) -> dict:
        filt = {"_id": {"$ne": RUN_RECORD_ID}}
        if roi is not None:
            site = _check_site(site)
            begin, end = _roi_bounds(roi)
            for a, b, e in zip("zyx", begin, end):
                filt[f"{site}_{a}"] = {"$gte": b, "$lt": e}
        return filt

    @staticmethod
    def _docs_to_partners(docs) -> np.ndarray:
        out = _from_rows([tuple(d.get(f) for f in PARTNER_FIELDS) for d in docs])
        # sorted here: servers differ in how they order mixed-width integer keys
        return out[np.argsort(out["id"], kind="stable")]

    def query(self, roi=None, *, site: str = "post") -> np.ndarray:
        filt = self._filter(roi, site)
        proj = {f: 1 for f in PARTNER_FIELDS}
        proj["_id"] = 0
        docs = self._guard("query", lambda: list(self._col.find(filt, proj)))
        return self._docs_to_partners(docs)

    def _ensure_id_index(self) -> None:
        """The index on ``id`` that paging needs (collections of older synful versions lack it): made once,
        if the user may; otherwise every page scans the collection, which is slow but correct."""
        from pymongo.errors import OperationFailure

        if getattr(self, "_id_index_checked", False):
            return
        names = self._guard("listing collections", self._client[self.database].list_collection_names)
        if self.collection not in names:
            return  # nothing to page through; reading must not create the collection
        try:
            self._guard("indexing id", self._col.create_index, "id")
        except StoreError as e:
            if not isinstance(e.__context__, OperationFailure) and "OperationFailure" not in str(e):
                raise
            logging.getLogger(__name__).warning("%s: no index on id (%s); paging through the partners scans the "
                                                "collection for every batch", self.collection, e)
        self._id_index_checked = True

    def iter_batches(self, batch_rows: int = 100_000, roi=None, *, site: str = "post") -> Iterator[np.ndarray]:
        import pymongo

        batch_rows = _check_batch_rows(batch_rows)
        self._ensure_id_index()
        proj = {f: 1 for f in PARTNER_FIELDS}
        last = None
        while True:
            filt = self._filter(roi, site)
            if last is not None:
                filt["id"] = {"$gt": last}
            # keyset pagination on the field ``id`` (== ``_id``; indexed by create()): each batch is one short query,
            # no cursor held open between batches (a server may time it out while the caller writes a batch).
            # Not on ``_id``: wire-compatible servers differ in how they sort mixed-width integer keys there
            docs = self._guard("query", lambda f=filt: list(
                self._col.find(f, proj).sort("id", pymongo.ASCENDING).limit(batch_rows)))
            batch = self._docs_to_partners(docs)
            if len(batch):
                yield batch
            if len(docs) < batch_rows:
                return
            last = int(batch["id"][-1])

    def count(self) -> int:
        return int(self._guard("count", self._col.count_documents, {"_id": {"$ne": RUN_RECORD_ID}}))

    def block_ids(self) -> np.ndarray:
        ids = self._guard("listing blocks", self._col.distinct, "block_id")
        return np.array(sorted(int(i) for i in ids), dtype=np.int64)

    def drop(self) -> None:
        self._guard("drop", self._col.drop)

    def run_record(self) -> dict | None:
        doc = self._guard("reading the run record", self._col.find_one, {"_id": RUN_RECORD_ID})
        if doc is None:
            return None
        doc.pop("_id", None)
        return doc

    def claim_run(self, record: dict) -> dict | None:
        from pymongo.errors import DuplicateKeyError

        doc = {**json.loads(json.dumps(record)), "_id": RUN_RECORD_ID}

        def claim():
            old = self._col.find_one_and_replace({"_id": RUN_RECORD_ID, "run_id": record["run_id"]}, doc)
            if old is None:
                try:
                    self._col.insert_one(doc)
                except DuplicateKeyError:  # another run's record (or one inserted meanwhile): leave it
                    old = self._col.find_one({"_id": RUN_RECORD_ID})
            if old is not None:
                old.pop("_id", None)
            return old

        return self._guard("recording the run", claim)

    def identity(self) -> dict:
        # hosts without user info and options: the same server under other credentials is the same store.
        # What follows the last '@' cannot hold the password, however oddly it is escaped.
        scheme, _, rest = self._url.partition("://")
        hosts = re.split(r"[/?]", rest.rsplit("@", 1)[-1], maxsplit=1)[0]
        return {"backend": "mongodb", "hosts": f"{scheme}://{hosts}", "database": self.database,
                "collection": self.collection}

    def close(self) -> None:
        import pymongo

        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            # closing ends the server sessions, best effort: bounded, or a gone server costs a selection timeout
            with pymongo.timeout(1.0):
                client.close()

    def __getstate__(self):
        raise TypeError("a MongoStore holds a live connection; open the store inside each worker instead")


# --------------------------------------------------------------------------------------
# opening
# --------------------------------------------------------------------------------------

def read_secret_url(credentials_file, credentials_env) -> str | None:
    if credentials_file:
        path = Path(credentials_file)
        try:
            text = path.read_text().strip()
        except OSError as e:
            raise StoreError(f"{path}: cannot read the credentials file ({e.strerror})") from None
        if not text:
            raise StoreError(f"{path}: credentials file is empty (expected a mongodb:// URL)")
        return text.splitlines()[0].strip()
    if credentials_env:
        text = os.environ.get(credentials_env, "").strip()
        if not text:
            raise StoreError(f"environment variable {credentials_env} is unset or empty (expected a mongodb:// URL)")
        return text
    return None


def open_store(url: str, *, database: str = "synful", collection: str, base_dir=None,
               credentials_file=None, credentials_env=None, timeout: float = CONNECT_TIMEOUT_S) -> Store:
    """Open (but do not create) the partner collection ``collection`` in the store at ``url``.

    ``url``: ``sqlite:///relative/or/abs.sqlite`` (relative paths resolve
    against ``base_dir``, default the working directory; ``sqlite:////abs``
    is absolute) or ``mongodb://...`` / ``mongodb+srv://...``.  With
    ``credentials_file`` (a file whose first line is the URL) or
    ``credentials_env`` (an environment variable holding it), the MongoDB URL
    with credentials comes from there instead of ``url``.  An unreachable
    MongoDB raises :class:`StoreError` after ``timeout`` seconds; no message
    ever contains credentials.
    """
    secret = read_secret_url(credentials_file, credentials_env)
    if secret is not None:
        if not secret.startswith(("mongodb://", "mongodb+srv://")):
            raise StoreError(f"credentials from {credentials_file or '$' + str(credentials_env)}: "
                             f"expected a mongodb:// URL")
        url = secret
    url = str(url).strip()
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://"):]
        if not rest.startswith("/") or rest == "/":
            raise StoreError(f"store URL {url!r}: expected sqlite:///relative/path or sqlite:////absolute/path")
        path = Path(rest[1:])
        if not path.is_absolute():
            path = Path(base_dir or ".") / path
        return SQLiteStore(path.resolve(), collection)
    if url.startswith(("mongodb://", "mongodb+srv://")):
        return MongoStore(url, database, collection, timeout=timeout)
    raise StoreError(f"store URL {redact_url(url)!r}: expected sqlite:///path or mongodb://host:port")


def run_collection_name(predict_dir) -> str:
    """``partners_<exp>_t<T>_p<P>`` for a prediction setup directory."""
    from .scaffold import run_ids

    return f"partners_{run_ids(predict_dir).name}"


def open_run_store(predict_dir, *, timeout: float = CONNECT_TIMEOUT_S) -> Store:
    """The result store of the prediction run in ``predict_dir`` (from its predict_config.ini [Extraction]).

    A relative sqlite path resolves against ``predict_dir``; the collection is
    ``[Extraction] collection`` or ``partners_<exp>_t<T>_p<P>``.
    """
    from .config import read_predict_config

    predict_dir = Path(predict_dir).resolve()
    cfg = read_predict_config(predict_dir / "predict_config.ini").extraction
    return store_from_config(cfg, predict_dir, timeout=timeout)


def store_from_config(cfg, predict_dir, *, timeout: float = CONNECT_TIMEOUT_S) -> Store:
    """The store an [Extraction] section names, for the run in ``predict_dir``."""
    collection = cfg.collection or run_collection_name(predict_dir)
    return open_store(cfg.store_url, database=cfg.database, collection=collection, base_dir=predict_dir,
                      credentials_file=cfg.credentials_file, credentials_env=cfg.credentials_env, timeout=timeout)


def wait_for_mongodb(url: str, timeout: float = 30.0) -> None:
    """Block until a MongoDB server at ``url`` answers ping (used by test and benchmark set-ups)."""
    import pymongo

    deadline = time.monotonic() + timeout
    while True:
        client = pymongo.MongoClient(url, serverSelectionTimeoutMS=250)
        try:
            client.admin.command("ping")
            return
        except pymongo.errors.PyMongoError:
            if time.monotonic() > deadline:
                raise StoreError(f"MongoDB at {redact_url(url)} did not come up within {timeout:g} s") from None
            time.sleep(0.1)
        finally:
            client.close()
