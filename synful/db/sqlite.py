"""The SQLite backend: one file, WAL mode, lazy writable connection, read-only reads, one transaction wrapper."""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import contextmanager, suppress
from pathlib import Path

from .common import StoreError

__all__ = ["SQLiteDB", "has_table"]

#: seconds a writer waits for another process's write lock (SQLite's busy timeout)
BUSY_TIMEOUT_S = 600.0


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    """Whether the table ``name`` exists."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def _set_wal(conn: sqlite3.Connection, timeout: float) -> None:
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


class SQLiteDB:
    """One SQLite file (WAL mode: many readers, writers take turns), shared by the stores built on it.

    The writable connection is opened on the first :meth:`writer` or :meth:`transaction` (or at
    once by a store that calls :meth:`writer` when it opens); :meth:`read` before that opens a
    read-only connection per call and never creates, locks or modifies a file, so a read-only
    (archived) store can be read:

    - no file: ``default`` (nothing is created);
    - a ``-wal`` file beside it: a writer is attached (or died with committed transactions in the
      log), so the file is read through the log (``mode=ro``; SQLite may create the ``-shm`` index
      if it is missing);
    - no ``-wal`` file: no writer is attached (a writer's connection keeps its log until it
      closes), so the file is opened ``immutable`` (no lock, no ``-wal`` / ``-shm``).  Should a
      writer start meanwhile (the file or log changes during the read), the read is repeated
      through the log.

    Errors are :class:`StoreError` naming ``label`` (default the ``sqlite:///path`` URL) with
    SQLite's own message (e.g. ``database or disk is full``); a failed transaction is rolled back.
    """

    def __init__(self, path, *, timeout: float = BUSY_TIMEOUT_S, label: str | None = None):
        self.path = Path(path)
        self.name = f"sqlite:///{self.path}"
        self.label = label or self.name
        self.timeout = timeout
        self.lock = threading.RLock()  # one connection may serve several threads, one statement at a time
        self._conn: sqlite3.Connection | None = None
        self._depth = 0  # nesting of transaction()
        if self.path.exists() and not self.path.is_file():
            raise StoreError(f"{self.name}: not a file")

    def writer(self) -> sqlite3.Connection:
        """The writable connection, opened (and the file and its folder created) on the first call."""
        if self._conn is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(str(self.path), timeout=self.timeout, isolation_level=None,
                                       check_same_thread=False)
            except (OSError, sqlite3.Error) as e:
                raise StoreError(f"{self.name}: cannot open the SQLite store for writing: {e}") from None
            try:
                _set_wal(conn, self.timeout)
                conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as e:
                conn.close()
                raise StoreError(f"{self.name}: cannot open the SQLite store for writing: {e}") from None
            self._conn = conn
        return self._conn

    def _file_state(self):
        """(size, mtime) of the file and whether its ``-wal`` exists; None when there is no file."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_size, st.st_mtime_ns, self.path.with_name(self.path.name + "-wal").exists()

    def read(self, fn, default, *, table: str | None = None):
        """``fn(connection)`` on the writable connection if open, else on a read-only one (see the class);
        ``default`` when there is no file or (given ``table``) no such table."""
        if table is not None:
            return self.read(lambda conn: fn(conn) if has_table(conn, table) else default, default)
        if self._conn is not None:
            with self.lock:
                return self._call(fn, self._conn)
        for through_log in (False, True):
            before = self._file_state()
            if before is None:
                return default
            immutable = not (through_log or before[2])
            # as_uri percent-encodes the path; immutable: read as-is, without locks or side files
            uri = self.path.resolve().as_uri() + ("?mode=ro&immutable=1" if immutable else "?mode=ro")
            try:
                conn = sqlite3.connect(uri, uri=True, timeout=self.timeout, isolation_level=None)
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
            raise StoreError(f"{self.label}: {e}{hint}") from None

    @contextmanager
    def transaction(self, what: str):
        """The writable connection inside one write transaction: commits at the end of the outermost
        ``with``, rolls back on any error; an SQLite error becomes ``StoreError("<label>: <what> failed: ...")``.

        SQLite may already have rolled the transaction back itself (a full disk does): then a ROLLBACK
        would fail with "no transaction is active" and hide the cause, so it is only sent when one is open.
        """
        with self.lock:
            conn = self.writer()
            try:
                if self._depth:  # nested: the outermost transaction commits or rolls back
                    self._depth += 1
                    try:
                        yield conn
                    finally:
                        self._depth -= 1
                    return
                # BEGIN IMMEDIATE takes the write lock up front, so concurrent writers queue instead of deadlocking
                conn.execute("BEGIN IMMEDIATE")
                self._depth = 1
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        with suppress(sqlite3.Error):  # the first error is the one to report
                            conn.execute("ROLLBACK")
                    raise
                finally:
                    self._depth = 0
            except sqlite3.Error as e:
                raise StoreError(f"{self.label}: {what} failed: {e}") from None

    def __getstate__(self):
        # picklable while no connection is open (a store handed to a worker process), like a path
        if self._conn is not None:
            raise TypeError(f"{self.name}: an open SQLite connection cannot be pickled; open the store in the worker")
        return {k: v for k, v in self.__dict__.items() if k != "lock"}

    def __setstate__(self, state):
        self.__dict__.update(state, lock=threading.RLock())

    def close(self) -> None:
        """Close the writable connection (reads after this open read-only ones again)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
