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

The layers: :mod:`synful.db` owns the connections, URLs and errors of both backends (shared with
the neurotransmitter store :mod:`synful.transmitters.db`); :mod:`.base` holds the :class:`Store`
interface and the PARTNER_DTYPE conversions; :mod:`.sqlite` and :mod:`.mongo` the two backends.
"""

from __future__ import annotations

from pathlib import Path

# re-exported: these names have always been importable from synful.store
from ..db import (CONNECT_TIMEOUT_S, OUTAGE_BUDGET_S, SOCKET_TIMEOUT_S, StoreError, read_secret_url,  # noqa: F401
                  redact_url, resolve_store_url, wait_for_mongodb)
from .base import EXPORT_BATCH_ROWS, RUN_RECORD_ID, Store  # noqa: F401
from .mongo import MongoStore
from .sqlite import SQLiteStore

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
    kind, where = resolve_store_url(url, base_dir=base_dir, credentials_file=credentials_file,
                                    credentials_env=credentials_env, secret_must_be_mongodb=True)
    if kind == "sqlite":
        return SQLiteStore(where, collection)
    return MongoStore(where, database, collection, timeout=timeout)


def run_collection_name(predict_dir) -> str:
    """``partners_<exp>_t<T>_p<P>`` for a prediction setup directory."""
    from ..scaffold import run_ids

    return f"partners_{run_ids(predict_dir).name}"


def open_run_store(predict_dir, *, timeout: float = CONNECT_TIMEOUT_S) -> Store:
    """The result store of the prediction run in ``predict_dir`` (from its predict_config.ini [Extraction]).

    A relative sqlite path resolves against ``predict_dir``; the collection is
    ``[Extraction] collection`` or ``partners_<exp>_t<T>_p<P>``.
    """
    from ..config import read_predict_config

    predict_dir = Path(predict_dir).resolve()
    cfg = read_predict_config(predict_dir / "predict_config.ini").extraction
    return store_from_config(cfg, predict_dir, timeout=timeout)


def store_from_config(cfg, predict_dir, *, timeout: float = CONNECT_TIMEOUT_S) -> Store:
    """The store an [Extraction] section names, for the run in ``predict_dir``."""
    collection = cfg.collection or run_collection_name(predict_dir)
    return open_store(cfg.store_url, database=cfg.database, collection=collection, base_dir=predict_dir,
                      credentials_file=cfg.credentials_file, credentials_env=cfg.credentials_env, timeout=timeout)
