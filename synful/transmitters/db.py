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

This module is the typed document layer only: connections (WAL, busy timeout, the transaction
wrapper; MongoDB timeouts and authentication), URLs, credentials and :class:`StoreError` come
from :mod:`synful.db`, the backend layer the partner store (:mod:`synful.store`) uses too.

Collection names (Synister's layout)::

    <db>.synapses        synapse_id, x, y, z (nm), skeleton_id, [prepost, brain_region]
    <db>.skeletons       skeleton_id, nt_known (list of transmitter names), hemi_lineage_id
    <db>.hemilineages    hemi_lineage_id, hemi_lineage_name
    <db>.splits          split, synapse_id, part (train / validation / test)
    <db>_predictions.<split>_<exp>_t<T>_p<P>   one document per predicted synapse
"""

from __future__ import annotations

import json
import sqlite3
from abc import ABC, abstractmethod
from contextlib import contextmanager
from typing import Iterable, Iterator

from ..db import MongoDB, SQLiteDB, StoreError, has_table, quote_name, redact_url, resolve_store_url

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
#: seconds a writer waits for another process's write lock (prediction workers insert concurrently)
SQLITE_BUSY_TIMEOUT_S = 60.0
#: seconds to wait for a MongoDB server before failing
MONGODB_CONNECT_TIMEOUT_S = 10.0


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
    kind, where = resolve_store_url(url, base_dir=base_dir, credentials_file=credentials_file,
                                    credentials_env=credentials_env, expand_user=True)
    return f"sqlite:///{where}" if kind == "sqlite" else where


def open_store(url: str, *, must_exist: bool = False, **kwargs) -> "DocumentStore":
    """Open the store at ``url`` (see :func:`resolve_url` for ``base_dir`` and credentials).

    Opening creates nothing: a SQLite file (and its folder) is created by the first write, so a
    failed import or a read leaves no empty store behind.  ``must_exist=True`` is for the stages
    that read what ``synful transmitter import`` wrote (split, train, predict, evaluate): a
    missing SQLite file is then a StoreError naming it.  A MongoDB database likewise exists from
    its first write; readers find its collections empty.
    """
    kind, where = resolve_store_url(url, expand_user=True, **kwargs)
    if kind == "sqlite":
        if must_exist and not where.is_file():
            raise StoreError(f"{where}: no such store file (run `synful transmitter import` into "
                             f"sqlite:///{where} first)")
        return _SqliteStore(where)
    return _MongoStore(where)


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
# SQLite: one table per collection, one JSON document per row
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
        self.db, self.name = store.db, table
        self._q = quote_name(table)

    def _ensure(self, conn):
        conn.execute(f"CREATE TABLE IF NOT EXISTS {self._q} (id INTEGER PRIMARY KEY, doc TEXT NOT NULL)")

    def _read(self, fn, default):
        """``fn(connection)``, or ``default`` when the collection's table does not exist."""
        return self.db.read(fn, default, table=self.name)

    def insert_many(self, docs):
        rows = [(json.dumps(d, allow_nan=False),) for d in docs]
        with self.db.transaction(f"inserting into {self.name}") as conn:
            self._ensure(conn)
            try:
                conn.executemany(f"INSERT INTO {self._q} (doc) VALUES (?)", rows)
            except sqlite3.IntegrityError as e:
                raise StoreError(f"{self.db.name} {self.name}: {e}") from None
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
        where, params, rest = self._where(query)
        rows = self._read(lambda conn: conn.execute(f"SELECT doc FROM {self._q}{where} ORDER BY id", params)
                          .fetchall(), [])
        docs = (json.loads(r[0]) for r in rows)
        return [d for d in docs if _match(d, rest)]

    def count(self, query=None):
        where, params, rest = self._where(query)
        if rest:
            return len(self.find(query))
        return self._read(lambda conn: conn.execute(f"SELECT COUNT(*) FROM {self._q}{where}", params)
                          .fetchone()[0], 0)

    def delete_many(self, query):
        where, params, rest = self._where(query)
        with self.db.transaction(f"deleting from {self.name}") as conn:
            if not has_table(conn, self.name):
                return 0
            if rest:
                ids = [r[0] for r in conn.execute(f"SELECT id, doc FROM {self._q}{where}", params)
                       if _match(json.loads(r[1]), rest)]
                conn.executemany(f"DELETE FROM {self._q} WHERE id = ?", [(i,) for i in ids])
                return len(ids)
            return conn.execute(f"DELETE FROM {self._q}{where}", params).rowcount

    def create_index(self, field, unique=False):
        iname = quote_name(f"{self.name}__{field}")
        with self.db.transaction(f"indexing {self.name}") as conn:
            self._ensure(conn)
            conn.execute(f"CREATE {'UNIQUE ' if unique else ''}INDEX IF NOT EXISTS {iname} "
                         f"ON {self._q} (json_extract(doc, '$.{field}'))")

    def drop(self):
        with self.db.transaction(f"dropping {self.name}") as conn:
            conn.execute(f"DROP TABLE IF EXISTS {self._q}")


class _SqliteStore(DocumentStore):
    def __init__(self, path):
        # the writable connection (and the file) is opened by the first write, see SQLiteDB
        self.db = SQLiteDB(path, timeout=SQLITE_BUSY_TIMEOUT_S)
        self.url = self.db.name

    @contextmanager
    def transaction(self):
        with self.db.transaction("transaction"):
            yield

    def collection(self, database, name):
        return _SqliteCollection(self, f"{database}.{name}")

    def exists(self, database, name):
        return self.collection(database, name).count() > 0

    def list_collections(self, database):
        prefix = f"{database}."
        rows = self.db.read(lambda conn: conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                            .fetchall(), [])
        return sorted(r[0][len(prefix):] for r in rows if r[0].startswith(prefix))

    def close(self):
        self.db.close()


# --------------------------------------------------------------------------------------
# MongoDB: database <db>, collection <coll>
# --------------------------------------------------------------------------------------

class _MongoCollection(Collection):
    def __init__(self, db: MongoDB, coll):
        self.db, self.coll, self.name = db, coll, coll.full_name

    def insert_many(self, docs):
        import pymongo.errors

        docs = [dict(d) for d in docs]  # insert_many adds _id to the dicts it gets
        if not docs:
            return 0

        def insert():
            import bson.errors

            try:
                self.coll.insert_many(docs, ordered=True)
            except pymongo.errors.BulkWriteError as e:
                raise StoreError(f"{self.name}: {e.details.get('writeErrors', [{}])[0].get('errmsg', e)}") from None
            except (OverflowError, bson.errors.InvalidDocument) as e:
                # BSON has no integer beyond int64; importers check this first, so this is a last resort
                raise StoreError(f"{self.name}: a document cannot be stored in BSON: {e}") from None

        self.db.guard(f"inserting into {self.name}", insert)
        return len(docs)

    def find(self, query=None):
        return self.db.guard(f"reading {self.name}",
                             lambda: list(self.coll.find(query or {}, {"_id": False}).sort("_id", 1)))

    def count(self, query=None):
        return self.db.guard(f"counting {self.name}", self.coll.count_documents, query or {})

    def delete_many(self, query):
        return self.db.guard(f"deleting from {self.name}", self.coll.delete_many, query).deleted_count

    def create_index(self, field, unique=False):
        self.db.guard(f"indexing {self.name}", self.coll.create_index, [(field, 1)], unique=unique)

    def drop(self):
        self.db.guard(f"dropping {self.name}", self.coll.drop)


class _MongoStore(DocumentStore):
    def __init__(self, url: str):
        self.db = MongoDB(url, timeout=MONGODB_CONNECT_TIMEOUT_S, socket_timeout=None)
        self.url = self.db.name  # used in messages: never the credentials
        self.client = self.db.client

    def collection(self, database, name):
        return _MongoCollection(self.db, self.client[database][name])

    def exists(self, database, name):
        return self.db.guard(f"reading {database}.{name}",
                             lambda: self.client[database][name].count_documents({}, limit=1) > 0)

    def list_collections(self, database):
        return sorted(self.db.guard(f"listing {database}", self.client[database].list_collection_names))

    def close(self):
        self.db.close()


def claim_run_collection(store: "DocumentStore", database: str, collection: str, run_file, signature: str, *,
                         overwrite: bool, config_name: str, kind: str, redo: str = "") -> tuple[Collection, list]:
    """Open a per-run result collection (documents keyed by ``synapse_id``) for a run that may resume.

    A collection this run completed (its ``run_file`` names it) is refused unless ``overwrite``, which
    drops it; the run file is removed until the run completes again.  Documents written with another
    ``signature`` (``run_signature`` field: other checkpoint or settings) are refused, naming the first
    synapse and both signatures.  ``kind`` (e.g. "prediction") and ``redo`` (text after the signatures)
    shape the messages; ``config_name`` is the ini file whose ``overwrite`` key allows replacing.
    Returns the collection and the documents already in it (what a resumed run skips).
    """
    from pathlib import Path

    run_file = Path(run_file)
    where = f"{store.url} {database}.{collection}"
    coll = store.collection(database, collection)
    complete = run_file.is_file() and json.loads(run_file.read_text()).get("collection") == collection
    if store.exists(database, collection):
        if overwrite:
            coll.drop()
        elif complete:
            raise StoreError(f"{where}: {kind} collection exists (set overwrite = true in {config_name} or pass "
                             f"--overwrite to replace it)")
    run_file.unlink(missing_ok=True)
    coll.create_index("synapse_id", unique=True)
    done = coll.find()
    stale = next((d for d in done if d.get("run_signature") != signature), None)
    if stale is not None:
        raise StoreError(f"{where}: holds {kind}s of another checkpoint or settings (synapse {stale['synapse_id']}: "
                         f"run signature {stale.get('run_signature')}, now {signature}{redo}); set overwrite = true "
                         f"in {config_name} or pass --overwrite" + (" to redo the run" if redo else ""))
    return coll, done


def iter_chunks(items: list, size: int) -> Iterator[list]:
    """Consecutive slices of ``items`` of at most ``size`` elements."""
    for i in range(0, len(items), size):
        yield items[i:i + size]
