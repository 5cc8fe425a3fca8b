"""Small file helpers every stage shares: atomic writes, JSON, numbered files, the source commit.

- :func:`atomic_write`: write through a hidden temporary sibling, then rename it over the target,
  so a reader sees the old or the new file (or directory), never half of one;
- :func:`write_text`, :func:`write_json`: the same for text and JSON;
- :func:`numbered_path`, :func:`numbered_files`: files named by a number (``model_<it>.weights.h5``,
  ``model_<it>.keras``): the name of number ``n`` and all such files in a directory;
- :func:`git_commit`: the git commit of the synful source tree, for provenance records.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable

from ..errors import SynfulError

__all__ = ["TRAIN_LOCK", "LockedError", "exclusive_lock", "temp_path", "atomic_write", "write_text", "write_json", "numbered_path", "numbered_files", "git_commit"]

_COUNTER = itertools.count()


def temp_path(path) -> Path:
    """A hidden, unused sibling of ``path`` ending in ``path``'s name (so suffix checks such as Keras'
    ``.keras`` / ``.weights.h5`` or matplotlib's format from the suffix still hold)."""
    path = Path(path)
    return path.with_name(f".tmp-{os.getpid()}-{next(_COUNTER)}-{path.name}")


def _remove(path: Path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def atomic_write(path, write_fn: Callable[[Path], object]) -> Path:
    """Call ``write_fn(tmp)`` to write a temporary sibling of ``path``, then rename it to ``path``.

    ``write_fn`` may write a file or a directory (a zarr container) at ``tmp``.
    A file replaces ``path`` atomically; a directory replaces an existing
    ``path`` by two renames (the old one moved aside first, then removed).
    On any error the temporary is removed and ``path`` is left as it was.
    The parent directory must exist.  Returns ``path``.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        write_fn(tmp)
        if tmp.is_dir() and path.exists():
            old = temp_path(path)
            os.rename(path, old)
            os.rename(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    finally:
        _remove(tmp)
    return path


def write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path, data, *, indent: int | None = 2, default=None, newline: bool = False) -> Path:
    """Write ``json.dumps(data, indent=indent, default=default)`` (plus ``"\\n"`` with ``newline``) atomically."""
    return write_text(path, json.dumps(data, indent=indent, default=default) + ("\n" if newline else ""))


def _number_pattern(pattern: str) -> re.Pattern:
    if pattern.count("{}") != 1:
        raise ValueError(f"{pattern!r}: a numbered file name needs exactly one '{{}}'")
    before, after = pattern.split("{}")
    return re.compile(re.escape(before) + r"(\d+)" + re.escape(after))


def numbered_path(directory, pattern: str, number: int) -> Path:
    """``directory / pattern.format(number)``, e.g. ``numbered_path(d, "model_{}.weights.h5", 40)``."""
    return Path(directory) / pattern.format(int(number))


def numbered_files(directory, pattern: str) -> list[tuple[int, Path]]:
    """All ``(number, path)`` in ``directory`` whose name is ``pattern`` with a number for ``{}``,
    by increasing number; empty when ``directory`` does not exist."""
    directory = Path(directory)
    regex = _number_pattern(pattern)
    if not directory.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := regex.fullmatch(p.name)))


def git_commit() -> str | None:
    """The commit (``git rev-parse HEAD``) of the synful source tree, or None outside a git checkout."""
    src = Path(__file__).resolve().parent.parent.parent
    try:
        out = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


#: the lock file a training holds in its setup directory while it runs (partner, transmitter and embedding
#: training): a second concurrent run of the same setup is refused
TRAIN_LOCK = ".train.lock"


class LockedError(SynfulError):
    """Another process holds the lock of a run (a second concurrent run of the same setup)."""


@contextlib.contextmanager
def exclusive_lock(path, what: str):
    """Hold an exclusive ``flock`` on ``path`` (created when missing; it records the holder's pid and host)
    while the block runs; :class:`LockedError` naming ``what``, the holder and ``path`` when another process
    holds it.  The lock dies with its process (kill -9 included), so a crashed run never blocks the next; it
    covers processes on one host and on shared filesystems that implement flock."""
    import fcntl
    import socket

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise LockedError(f"{what}: already running ({holder}; lock {path}); wait for it or stop it") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        yield path
