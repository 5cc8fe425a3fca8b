"""Partners in a MongoDB collection (on :class:`synful.db.MongoDB`)."""

from __future__ import annotations

import json
import logging
from contextlib import suppress
from typing import Iterator

import numpy as np

from ..db import CONNECT_TIMEOUT_S, MongoDB, StoreError, check_collection_name
from ..io.partners import PARTNER_FIELDS
from .base import (RUN_RECORD_ID, Store, as_partners, check_batch_rows, check_site, iter_keyset_pages,
                   partner_rows, partners_from_rows, roi_bounds, skel_id_sides)

__all__ = ["MongoStore"]


class MongoStore(Store):
    """Partners in a MongoDB collection; the partner id is the document ``_id`` (and also field ``id``).

    The run record is the document ``_id = "synful_run"`` of the same collection.  Replies may take
    :data:`~synful.db.SOCKET_TIMEOUT_S`; once the server has been unreachable for
    :data:`~synful.db.OUTAGE_BUDGET_S` seconds (counted from the start of the first operation that
    found it gone), every further operation of this object fails at once with :class:`StoreError`,
    so the blocks of a run fail fast instead of each waiting out its own timeout; a successful
    operation within the budget resets it (see :class:`synful.db.MongoDB`).
    """

    def __init__(self, url: str, database: str, collection: str, *, timeout: float = CONNECT_TIMEOUT_S):
        self.collection = check_collection_name(collection)
        self.database = database
        self._db = MongoDB(url, timeout=timeout)
        self.name, self._url = self._db.name, url
        self._db.label = f"{self.name} [{database}.{self.collection}]"
        self._client = self._db.client
        self._col = self._client[database][self.collection]
        self._id_index_checked = False

    def check_reachable(self) -> None:
        self._db.check_reachable()

    def _guard(self, what: str, fn, *args, **kwargs):
        return self._db.guard(what, fn, *args, **kwargs)

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

        partners = as_partners(partners)
        block_id = int(block_id)
        docs = []
        for row in partner_rows(partners, block_id):
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

        ids, sides = skel_id_sides(ids, pre_skel_ids, post_skel_ids)
        if not ids or not sides:
            return
        ops = [pymongo.UpdateOne({"_id": i}, {"$set": {f: v[k] for f, v in sides}}) for k, i in enumerate(ids)]
        self._guard("setting skeleton ids", self._col.bulk_write, ops, ordered=False)

    @staticmethod
    def _filter(roi, site: str) -> dict:
        filt = {"_id": {"$ne": RUN_RECORD_ID}}
        if roi is not None:
            site = check_site(site)
            begin, end = roi_bounds(roi)
            for a, b, e in zip("zyx", begin, end):
                filt[f"{site}_{a}"] = {"$gte": b, "$lt": e}
        return filt

    @staticmethod
    def _docs_to_partners(docs) -> np.ndarray:
        out = partners_from_rows([tuple(d.get(f) for f in PARTNER_FIELDS) for d in docs])
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

        if self._id_index_checked:
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

        batch_rows = check_batch_rows(batch_rows)
        self._ensure_id_index()
        proj = {f: 1 for f in PARTNER_FIELDS}

        def read_page(last, limit):
            filt = self._filter(roi, site)
            if last is not None:
                filt["id"] = {"$gt": last}
            # keyset pagination on the field ``id`` (== ``_id``; indexed by create()): each batch is one short query,
            # no cursor held open between batches (a server may time it out while the caller writes a batch).
            # Not on ``_id``: wire-compatible servers differ in how they sort mixed-width integer keys there
            docs = self._guard("query", lambda: list(self._col.find(filt, proj).sort("id", pymongo.ASCENDING)
                                                     .limit(limit)))
            return self._docs_to_partners(docs), len(docs)

        yield from iter_keyset_pages(read_page, batch_rows)

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
        return {"backend": "mongodb", "hosts": self._db.hosts, "database": self.database,
                "collection": self.collection}

    def close(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()

    def __getstate__(self):
        raise TypeError("a MongoStore holds a live connection; open the store inside each worker instead")
