"""The MongoDB backend: connecting (timeouts, authentication), one error guard with the outage budget."""

from __future__ import annotations

import time

from .common import StoreError, redact_url, url_hosts

__all__ = ["MongoDB", "wait_for_mongodb", "CONNECT_TIMEOUT_S", "SOCKET_TIMEOUT_S", "OUTAGE_BUDGET_S"]

#: seconds to wait for a MongoDB server before failing
CONNECT_TIMEOUT_S = 5.0
#: seconds a MongoDB reply may take on an open connection (a hung server must not block a worker forever)
SOCKET_TIMEOUT_S = 15.0
#: seconds a MongoDB server may stay unreachable; after that every operation of the process fails at once
OUTAGE_BUDGET_S = 5.0
#: server error code of a failed authentication (wrong user, password or authSource)
_AUTH_FAILED = 18


def clean_error(e) -> str:
    """An exception message without credentials and trimmed to its first line."""
    text = str(e).splitlines()[0] if str(e) else ""
    text = text.split(", Timeout:")[0]
    return redact_url(text)[:300]


def _connect(url: str, name: str, timeout: float, socket_timeout: float | None):
    """A pymongo client that has answered ping (the client connects lazily, so ask the server now)."""
    import pymongo
    from pymongo.errors import OperationFailure, PyMongoError

    client = None
    try:
        client = pymongo.MongoClient(url, serverSelectionTimeoutMS=int(timeout * 1000),
                                     connectTimeoutMS=int(timeout * 1000),
                                     socketTimeoutMS=None if socket_timeout is None
                                     else int(max(socket_timeout, timeout) * 1000))
        client.admin.command("ping")
        return client
    except OperationFailure as e:
        why = "refused the credentials" if e.code == _AUTH_FAILED else "refused the connection"
        cause = f"MongoDB at {name} {why} ({type(e).__name__}: {clean_error(e)})"
    except PyMongoError as e:
        cause = f"cannot reach MongoDB at {name} within {timeout:g} s ({type(e).__name__}: {clean_error(e)})"
    except KeyError as e:
        # pymongo's SCRAM client indexes the server's reply; a server that answers the handshake
        # without authenticating (nx-27017 does) surfaces as KeyError: 'payload'
        cause = (f"cannot authenticate to MongoDB at {name}: the server's answer to the authentication "
                 f"lacks {e}; check that it supports authentication and the user and authSource")
    except (ValueError, TypeError) as e:  # malformed URL
        cause = f"invalid MongoDB URL {name}: {clean_error(e)}"
    if client is not None:
        client.close()
    raise StoreError(cause)


class MongoDB:
    """A connection to one MongoDB server (``url`` may hold credentials; only :attr:`name` is ever shown).

    Opening pings the server: unreachable within ``timeout`` seconds, refused credentials or a
    malformed URL raise one :class:`StoreError` line naming the redacted URL.  Replies may take
    ``socket_timeout`` seconds (None: no limit).  Run every operation through :meth:`guard`: a
    pymongo error becomes :class:`StoreError` naming ``label`` (default :attr:`name`); once the
    server has been unreachable for :data:`OUTAGE_BUDGET_S` seconds (counted from the start of the
    first operation that found it gone), every further operation fails at once, so the blocks of a
    run fail fast instead of each waiting out its own timeout; a successful operation within the
    budget resets it.
    """

    def __init__(self, url: str, *, timeout: float = CONNECT_TIMEOUT_S, socket_timeout: float | None = SOCKET_TIMEOUT_S,
                 label: str | None = None):
        self.name = redact_url(url)
        self.label = label or self.name
        self.client = _connect(url, self.name, timeout, socket_timeout)
        self.url = url
        self._down_since: float | None = None  # monotonic start of the first operation that found the server gone
        self._down_cause = ""

    @property
    def hosts(self) -> str:
        """``scheme://hosts`` without user info and options: the same server under other credentials is the same."""
        return url_hosts(self.url)

    def check_reachable(self) -> None:
        """Raise :class:`StoreError` at once when the server has been gone longer than the outage budget."""
        if self._down_since is not None:
            gone = time.monotonic() - self._down_since
            if gone > OUTAGE_BUDGET_S:
                raise StoreError(f"{self.label}: MongoDB has been unreachable for {gone:.0f} s ({self._down_cause}); "
                                 f"giving up (rerun once it is back: blocks that failed are not marked done)")

    def guard(self, what: str, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``; a pymongo error becomes ``StoreError("<label>: <what> failed (...)")``."""
        from pymongo.errors import ConnectionFailure, PyMongoError

        self.check_reachable()
        t0 = time.monotonic()
        try:
            result = fn(*args, **kwargs)
        except ConnectionFailure as e:  # also AutoReconnect, NetworkTimeout, ServerSelectionTimeoutError
            if self._down_since is None:
                self._down_since, self._down_cause = t0, f"{type(e).__name__}: {clean_error(e)}"
            raise StoreError(f"{self.label}: {what} failed ({type(e).__name__}: {clean_error(e)})") from None
        except PyMongoError as e:
            raise StoreError(f"{self.label}: {what} failed ({type(e).__name__}: {clean_error(e)})") from None
        self._down_since = None
        return result

    def close(self) -> None:
        """End the connection, best effort: bounded, or a gone server costs a selection timeout."""
        import pymongo

        client, self.client = self.client, None
        if client is not None:
            with pymongo.timeout(1.0):
                client.close()

    def __getstate__(self):
        raise TypeError("a MongoDB store holds a live connection; open the store inside each worker instead")


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
