"""The one backend layer under synful's stores: SQLite and MongoDB connections, URLs, errors.

Both typed stores sit on it -- the partner result store (:mod:`synful.store`) and the
neurotransmitter document store (:mod:`synful.transmitters.db`) -- so each of these is done once:

- URLs: ``sqlite:///relative/or/abs`` (relative to a base directory; ``sqlite:////abs`` is
  absolute) or ``mongodb://`` / ``mongodb+srv://``; credentials read from a file or an
  environment variable (:func:`resolve_store_url`); URLs shown only through :func:`redact_url`.
- Errors: :class:`StoreError`, one line naming the store, never its credentials.
- SQLite (:class:`SQLiteDB`): WAL mode, busy timeout, lazy writable connection, read-only
  reads that never create or modify a file, one transaction wrapper that rolls back and keeps
  SQLite's own cause (``database or disk is full``).
- MongoDB (:class:`MongoDB`): connect and socket timeouts, authentication failures, one
  error guard with the outage budget (:data:`OUTAGE_BUDGET_S`).
- Collection names (:func:`check_collection_name`).
"""

from .common import (StoreError, check_collection_name, quote_name, read_secret_url, redact_url,
                     resolve_store_url, url_hosts)
from .mongo import CONNECT_TIMEOUT_S, OUTAGE_BUDGET_S, SOCKET_TIMEOUT_S, MongoDB, clean_error, wait_for_mongodb
from .sqlite import BUSY_TIMEOUT_S, SQLiteDB, has_table

__all__ = [
    "StoreError", "redact_url", "read_secret_url", "resolve_store_url", "check_collection_name", "quote_name",
    "url_hosts", "SQLiteDB", "has_table", "BUSY_TIMEOUT_S", "MongoDB", "clean_error", "wait_for_mongodb",
    "CONNECT_TIMEOUT_S", "SOCKET_TIMEOUT_S", "OUTAGE_BUDGET_S",
]
