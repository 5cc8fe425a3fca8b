"""What both backends share: the error, URL parsing and redaction, credentials, collection names."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import SynfulError

__all__ = ["StoreError", "redact_url", "read_secret_url", "resolve_store_url", "check_collection_name"]


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
_COLLECTION_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_MONGODB_SCHEMES = ("mongodb://", "mongodb+srv://")


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


def url_hosts(url: str) -> str:
    """``scheme://hosts`` of a server URL: no user info, database or options.

    What follows the last '@' cannot hold the password, however oddly it is escaped.
    """
    scheme, _, rest = url.partition("://")
    hosts = re.split(r"[/?]", rest.rsplit("@", 1)[-1], maxsplit=1)[0]
    return f"{scheme}://{hosts}"


def read_secret_url(credentials_file, credentials_env) -> str | None:
    """The URL (with credentials) from the first line of ``credentials_file`` or from the environment
    variable ``credentials_env``; None when neither is given."""
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


def resolve_store_url(url: str, *, base_dir=None, credentials_file=None, credentials_env=None,
                      secret_must_be_mongodb: bool = False, expand_user: bool = False) -> tuple[str, Path | str]:
    """``("sqlite", absolute path)`` or ``("mongodb", URL)``: where a store URL points.

    ``credentials_file`` / ``credentials_env`` (see :func:`read_secret_url`) replace ``url`` when
    given (``secret_must_be_mongodb``: refuse anything but a MongoDB URL there).
    ``sqlite:///rel/path`` resolves against ``base_dir`` (default the working directory; with
    ``expand_user`` a leading ``~`` is the home directory first), ``sqlite:////abs/path`` is absolute.
    """
    secret = read_secret_url(credentials_file, credentials_env)
    if secret is not None:
        if secret_must_be_mongodb and not secret.startswith(_MONGODB_SCHEMES):
            raise StoreError(f"credentials from {credentials_file or '$' + str(credentials_env)}: "
                             f"expected a mongodb:// URL")
        url = secret
    url = str(url).strip()
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://"):]
        if not rest.startswith("/") or rest == "/":
            raise StoreError(f"store URL {url!r}: expected sqlite:///relative/path or sqlite:////absolute/path")
        path = Path(os.path.expanduser(rest[1:]) if expand_user else rest[1:])
        if not path.is_absolute():
            path = Path(base_dir or ".") / path
        return "sqlite", path.resolve()
    if url.startswith(_MONGODB_SCHEMES):
        return "mongodb", url
    raise StoreError(f"store URL {redact_url(url)!r}: expected sqlite:///path or mongodb://host:port")


def check_collection_name(name: str) -> str:
    """``name`` if it is a safe collection / table name (letters, digits, '_', '-', '.'), else StoreError."""
    if not isinstance(name, str) or not _COLLECTION_RE.fullmatch(name):
        raise StoreError(f"collection name {name!r}: use letters, digits, '_', '-' or '.' (not starting with a digit)")
    return name


def quote_name(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'
