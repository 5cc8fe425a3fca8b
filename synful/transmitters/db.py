"""A small document store for the neurotransmitter data: synapses, skeletons, hemilineages, splits, predictions.

One URL scheme for both backends, as for the partner result store:

- ``mongodb://[user:pass@]host:port`` -- MongoDB through pymongo; collection
  ``<coll>`` of database ``<db>`` is the usual ``<db>.<coll>``.
- ``sqlite:///path/file.sqlite`` -- one SQLite file (stdlib sqlite3, WAL mode);
  collection ``<coll>`` of database ``<db>`` is the table ``"<db>.<coll>"``
  holding one JSON document per row.

Documents are plain JSON-able dicts (ints, floats, strings, lists, nested
dicts); MongoDB's ``_id`` is never returned.  Queries are equality filters
``{field: value}`` plus ``{field: {"$in": [...]}}``.

Collection names (Synister's layout)::

    <db>.synapses        synapse_id, x, y, z (nm), skeleton_id, [prepost, brain_region]
    <db>.skeletons       skeleton_id, nt_known (list of transmitter names), hemi_lineage_id
    <db>.hemilineages    hemi_lineage_id, hemi_lineage_name
    <db>.splits          split, synapse_id, part (train / validation / test)
    <db>_predictions.<split>_<exp>_t<T>_p<P>   one document per predicted synapse
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from ..store import StoreError, read_secret_url, redact_url

__all__ = [
    "StoreError",
    "DocumentStore",
    "Collection",
    "open_store",
    "resolve_url",
    "redact_url",
    "SYNAPSES",
    "SKELETONS",
    "HEMILINEAGES",
    "SPLITS",
    "prediction_collection_name",
]

SYNAPSES = "synapses"
SKELETONS = "skeletons"
HEMILINEAGES = "hemilineages"
SPLITS = "splits"


def prediction_collection_name(split: str, run_name: str) -> str:
    """``<split>_<exp>_t<T>_p<P>``: the prediction collection of a run (in database ``<db>_predictions``)."""
    return f"{split}_{run_name}"


def resolve_url(url: str, *, base_dir=None, credentials_file=None, credentials_env=None) -> str:
    """The store URL to connect to.

    ``credentials_file`` (a file whose first line is the URL) or
    ``credentials_env`` (an environment variable holding it) replace ``url``
    when given, so passwords never sit in configs.  ``sqlite:///rel/path``
    resolves against ``base_dir`` (the folder of the config that named it;
    default the working directory), ``sqlite:////abs/path`` is absolute.
    """
    secret = read_secret_url(credentials_file, credentials_env)
    url = str(secret if secret is not None else url).strip()
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://"):]
        if not rest.startswith("/") or rest == "/":
            raise StoreError(f"store URL {url!r}: expected sqlite:///relative/path or sqlite:////absolute/path")
        path = Path(os.path.expanduser(rest[1:]))
        if not path.is_absolute():
            path = Path(base_dir or ".") / path
        return "sqlite:///" + str(path.resolve())
    if url.startswith(("mongodb://", "mongodb+srv://")):
        return url
    raise StoreError(f"store URL {redact_url(url)!r}: expected sqlite:///path or mongodb://host:port")


def open_store(url: str, **kwargs) -> "DocumentStore":
    """Open the store at ``url`` (see :func:`resolve_url` for ``base_dir`` and credentials)."""
    url = resolve_url(url, **kwargs)
    if url.startswith("sqlite:///"):
        return _SqliteStore(Path(url[len("sqlite:///"):]))
    return _MongoStore(url)


class Collection(ABC):
    """One collection of documents.  Both backends implement exactly these methods."""

    name: str

    @abstractmethod
    def insert_many(self, docs: Iterable[dict]) -> int:
        """Insert documents; return how many.  Violating a unique index raises StoreError."""
        ...

    @abstractmethod
    def find(self, query: dict | None = None) -> list[dict]:
        """All documents matching ``query`` (equality and ``$in`` filters), in insertion order."""
        ...

    def count(self, query: dict | None = None) -> int:
        """Number of documents matching ``query``."""
        return len(self.find(query))

    @abstractmethod
    def delete_many(self, query: dict) -> int:
        """Delete matching documents; return how many."""
        ...

    @abstractmethod
    def create_index(self, field: str, unique: bool = False):
        """Index ``field`` (optionally unique)."""
        ...

    @abstractmethod
    def drop(self):
        """Remove the collection and its indexes."""
        ...


class DocumentStore(ABC):
    """A connection to one store; :meth:`collection` gives ``<database>.<name>``."""

    url: str

    @abstractmethod
    def collection(self, database: str, name: str) -> Collection:
        ...

    @abstractmethod
    def exists(self, database: str, name: str) -> bool:
        """Whether the collection exists and holds at least one document."""
        ...

    @abstractmethod
    def list_collections(self, database: str) -> list[str]:
        ...

    @contextmanager
    def transaction(self):
        """All writes inside commit together (SQLite); MongoDB writes are not grouped."""
        yield

    def close(self):
        """Release the connection (a no-op where there is nothing to release)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------------------
# SQLite
# --------------------------------------------------------------------------------------

def _match(doc: dict, query: dict) -> bool:
    for k, v in query.items():
        if isinstance(v, dict) and "$in" in v:
            if doc.get(k) not in v["$in"]:
                return False
        elif doc.get(k) != v:
            return False
    return True


class _SqliteCollection(Collection):
    def __init__(self, store: "_SqliteStore", table: str):
        self.store, self.name = store, table
        self._q = '"' + table.replace('"', '""') + '"'

    def _ensure(self):
        self.store.conn.execute(f"CREATE TABLE IF NOT EXISTS {self._q} (id INTEGER PRIMARY KEY, doc TEXT NOT NULL)")

    def insert_many(self, docs):
        rows = [(json.dumps(d, allow_nan=False),) for d in docs]
        with self.store._write():
            self._ensure()
            try:
                self.store.conn.executemany(f"INSERT INTO {self._q} (doc) VALUES (?)", rows)
            except sqlite3.IntegrityError as e:
                raise StoreError(f"{self.store.url} {self.name}: {e}") from None
        return len(rows)

    def _where(self, query):
        # scalar equalities go to SQL (indexable); $in filters are applied in Python
        clauses, params, rest = [], [], {}
        for k, v in (query or {}).items():
            if isinstance(v, (int, float, str)) and not isinstance(v, bool):
                clauses.append(f"json_extract(doc, '$.{k}') = ?")
                params.append(v)
            else:
                rest[k] = v
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params, rest

    def find(self, query=None):
        if not self.store._has_table(self.name):
            return []
        where, params, rest = self._where(query)
        with self.store.lock:
            rows = self.store.conn.execute(f"SELECT doc FROM {self._q}{where} ORDER BY id", params).fetchall()
        docs = (json.loads(r[0]) for r in rows)
        return [d for d in docs if _match(d, rest)]

    def count(self, query=None):
        if not self.store._has_table(self.name):
            return 0
        where, params, rest = self._where(query)
        if rest:
            return len(self.find(query))
        with self.store.lock:
            return self.store.conn.execute(f"SELECT COUNT(*) FROM {self._q}{where}", params).fetchone()[0]

    def delete_many(self, query):
        if not self.store._has_table(self.name):
            return 0
        where, params, rest = self._where(query)
        with self.store._write():
            if rest:
                ids = [r[0] for r in self.store.conn.execute(f"SELECT id, doc FROM {self._q}{where}", params)
                       if _match(json.loads(r[1]), rest)]
                self.store.conn.executemany(f"DELETE FROM {self._q} WHERE id = ?", [(i,) for i in ids])
                return len(ids)
            return self.store.conn.execute(f"DELETE FROM {self._q}{where}", params).rowcount

    def create_index(self, field, unique=False):
        iname = '"' + f"{self.name}__{field}".replace('"', '""') + '"'
        with self.store._write():
            self._ensure()
            self.store.conn.execute(f"CREATE {'UNIQUE ' if unique else ''}INDEX IF NOT EXISTS {iname} "
                                    f"ON {self._q} (json_extract(doc, '$.{field}'))")

    def drop(self):
        with self.store._write():
            self.store.conn.execute(f"DROP TABLE IF EXISTS {self._q}")


class _SqliteStore(DocumentStore):
    def __init__(self, path: Path):
        self.url = f"sqlite:///{path}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(str(path), timeout=60, isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"{self.url}: cannot open: {e}") from None
        self.lock = threading.RLock()
        self._depth = 0

    @contextmanager
    def _write(self):
        with self.lock:
            if self._depth:
                yield
                return
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    @contextmanager
    def transaction(self):
        with self._write():
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1

    def _has_table(self, table):
        with self.lock:
            return self.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                                     (table,)).fetchone() is not None

    def collection(self, database, name):
        return _SqliteCollection(self, f"{database}.{name}")

    def exists(self, database, name):
        return self.collection(database, name).count() > 0

    def list_collections(self, database):
        prefix = f"{database}."
        with self.lock:
            rows = self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
        return sorted(r[0][len(prefix):] for r in rows if r[0].startswith(prefix))

    def close(self):
        self.conn.close()


# --------------------------------------------------------------------------------------
# MongoDB
# --------------------------------------------------------------------------------------

class _MongoCollection(Collection):
    def __init__(self, coll):
        self.coll, self.name = coll, coll.full_name

    def insert_many(self, docs):
        import pymongo.errors

        docs = [dict(d) for d in docs]  # insert_many adds _id to the dicts it gets
        if not docs:
            return 0
        try:
            self.coll.insert_many(docs, ordered=True)
        except pymongo.errors.BulkWriteError as e:
            raise StoreError(f"{self.name}: {e.details.get('writeErrors', [{}])[0].get('errmsg', e)}") from None
        return len(docs)

    def find(self, query=None):
        return list(self.coll.find(query or {}, {"_id": False}).sort("_id", 1))

    def count(self, query=None):
        return self.coll.count_documents(query or {})

    def delete_many(self, query):
        return self.coll.delete_many(query).deleted_count

    def create_index(self, field, unique=False):
        self.coll.create_index([(field, 1)], unique=unique)

    def drop(self):
        self.coll.drop()


class _MongoStore(DocumentStore):
    def __init__(self, url: str):
        import pymongo
        import pymongo.errors

        self.url = redact_url(url)  # used in messages: never the credentials
        try:
            self.client = pymongo.MongoClient(url, serverSelectionTimeoutMS=10000)
            self.client.admin.command("ping")
        except pymongo.errors.PyMongoError as e:
            raise StoreError(f"{self.url}: cannot connect: {str(e).splitlines()[0][:200]}") from None

    def collection(self, database, name):
        return _MongoCollection(self.client[database][name])

    def exists(self, database, name):
        return self.client[database][name].count_documents({}, limit=1) > 0

    def list_collections(self, database):
        return sorted(self.client[database].list_collection_names())

    def close(self):
        self.client.close()


def iter_chunks(items: list, size: int) -> Iterator[list]:
    """Consecutive slices of ``items`` of at most ``size`` elements."""
    for i in range(0, len(items), size):
        yield items[i:i + size]
