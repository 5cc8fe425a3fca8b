"""Partners in a table of an SQLite file (on :class:`synful.db.SQLiteDB`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

from ..db import SQLiteDB, check_collection_name, quote_name
from ..io.partners import PARTNER_FIELDS, empty_partners
from .base import (FETCH_ROWS, Store, as_partners, check_batch_rows, check_site, iter_keyset_pages,
                   partner_rows, partners_from_cursor, roi_bounds, skel_id_sides)

__all__ = ["SQLiteStore"]


class SQLiteStore(Store):
    """Partners in a table of an SQLite file (WAL mode: many readers, writers take turns).

    The writable connection is opened on the first :meth:`create`,
    :meth:`write_block`, :meth:`drop` or :meth:`claim_run`; reads before that
    open a read-only connection per call and never create, lock or modify a
    file, so a read-only (archived) run can be queried and exported (see
    :class:`synful.db.SQLiteDB`).  The run record is the one row of the
    companion table ``<collection>__run``.

    Errors name the file and keep SQLite's own message (e.g. ``database or
    disk is full``); a failed write leaves the block as it was.
    """

    def __init__(self, path, collection: str, *, timeout: float = 600.0):
        self.collection = check_collection_name(collection)
        self._db = SQLiteDB(path, timeout=timeout, label=f"sqlite:///{Path(path)} [{collection}]")
        self.path, self.name = self._db.path, self._db.name
        self._table = quote_name(self.collection)
        self._run_table = quote_name(self.collection + "__run")

    # ---- the collection

    def create(self) -> None:
        cols = ", ".join(f"{f} INTEGER" for f in PARTNER_FIELDS if f not in ("id", "score"))
        stem = self.collection.replace('"', "")
        with self._db.transaction("creating the collection") as conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {self._table} (id INTEGER PRIMARY KEY, {cols}, score REAL, "
                         f"block_id INTEGER NOT NULL)")
            conn.execute(f'CREATE INDEX IF NOT EXISTS "{stem}__block" ON {self._table} (block_id)')
            conn.execute(f'CREATE INDEX IF NOT EXISTS "{stem}__post" ON {self._table} (post_z, post_y, post_x)')
            conn.execute(f'CREATE INDEX IF NOT EXISTS "{stem}__pre" ON {self._table} (pre_z, pre_y, pre_x)')

    def write_block(self, block_id: int, partners: np.ndarray) -> None:
        partners = as_partners(partners)
        fields = list(PARTNER_FIELDS) + ["block_id"]
        rows = partner_rows(partners, int(block_id))
        sql = f"INSERT OR REPLACE INTO {self._table} ({', '.join(fields)}) VALUES ({', '.join('?' * len(fields))})"
        with self._db.transaction(f"writing block {block_id}") as conn:
            conn.execute(f"DELETE FROM {self._table} WHERE block_id = ?", (int(block_id),))
            conn.executemany(sql, rows)

    def set_skel_ids(self, ids, pre_skel_ids=None, post_skel_ids=None) -> None:
        ids, sides = skel_id_sides(ids, pre_skel_ids, post_skel_ids)
        if not ids or not sides:
            return
        rows = list(zip(*[v for _, v in sides], ids))
        sql = f"UPDATE {self._table} SET {', '.join(f'{f} = ?' for f, _ in sides)} WHERE id = ?"
        with self._db.transaction("setting skeleton ids") as conn:
            conn.executemany(sql, rows)

    @staticmethod
    def _roi_where(roi, site: str):
        if roi is None:
            return [], []
        begin, end = roi_bounds(roi)
        site = check_site(site)
        return ([f"{site}_{a} >= ? AND {site}_{a} < ?" for a in "zyx"],
                [v for pair in zip(begin, end) for v in pair])

    def _read(self, fn, default, table=None):
        """``fn(connection)``, or ``default`` when the table (default: the partners') does not exist."""
        return self._db.read(fn, default, table=self.collection if table is None else table)

    def query(self, roi=None, *, site: str = "post") -> np.ndarray:
        conds, params = self._roi_where(roi, site)
        where = " WHERE " + " AND ".join(conds) if conds else ""

        def read(conn):
            cur = conn.execute(f"SELECT {', '.join(PARTNER_FIELDS)} FROM {self._table}{where} ORDER BY id", params)
            chunks = []  # converted a few thousand rows at a time: never the whole run as Python objects
            while len(chunk := partners_from_cursor(cur, FETCH_ROWS)):
                chunks.append(chunk)
            return np.concatenate(chunks) if chunks else empty_partners(0)

        return self._read(read, empty_partners(0))

    def iter_batches(self, batch_rows: int = 100_000, roi=None, *, site: str = "post") -> Iterator[np.ndarray]:
        batch_rows = check_batch_rows(batch_rows)
        conds, params = self._roi_where(roi, site)

        def read_page(last, limit):
            c, p = list(conds), list(params)
            if last is not None:
                c.append("id > ?")
                p.append(last)
            where = " WHERE " + " AND ".join(c) if c else ""
            sql = f"SELECT {', '.join(PARTNER_FIELDS)} FROM {self._table}{where} ORDER BY id LIMIT ?"
            batch = self._read(lambda conn: partners_from_cursor(conn.execute(sql, (*p, limit)), limit),
                               empty_partners(0))
            return batch, len(batch)

        yield from iter_keyset_pages(read_page, batch_rows)

    def count(self) -> int:
        return self._read(lambda conn: int(conn.execute(f"SELECT COUNT(*) FROM {self._table}").fetchone()[0]), 0)

    def block_ids(self) -> np.ndarray:
        def read(conn):
            rows = conn.execute(f"SELECT DISTINCT block_id FROM {self._table} ORDER BY block_id").fetchall()
            return np.array([r[0] for r in rows], dtype=np.int64)

        return self._read(read, np.zeros(0, dtype=np.int64))

    def drop(self) -> None:
        with self._db.transaction("dropping the collection") as conn:
            conn.execute(f"DROP TABLE IF EXISTS {self._table}")
            conn.execute(f"DROP TABLE IF EXISTS {self._run_table}")

    def run_record(self) -> dict | None:
        def read(conn):
            row = conn.execute(f"SELECT record FROM {self._run_table} WHERE key = 0").fetchone()
            return None if row is None else json.loads(row[0])

        return self._read(read, None, table=self.collection + "__run")

    def claim_run(self, record: dict) -> dict | None:
        text = json.dumps(record, sort_keys=True)
        with self._db.transaction("recording the run") as conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {self._run_table} "
                         f"(key INTEGER PRIMARY KEY, record TEXT NOT NULL)")
            row = conn.execute(f"SELECT record FROM {self._run_table} WHERE key = 0").fetchone()
            old = None if row is None else json.loads(row[0])
            if old is None or old.get("run_id") == record["run_id"]:
                conn.execute(f"INSERT OR REPLACE INTO {self._run_table} (key, record) VALUES (0, ?)", (text,))
        return old

    def identity(self) -> dict:
        return {"backend": "sqlite", "path": str(self.path.resolve()), "collection": self.collection}

    def close(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
