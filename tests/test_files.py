"""synful.io.files: atomic writes, JSON, numbered files, the source commit."""

from __future__ import annotations

import json

import pytest

from synful.io.files import atomic_write, git_commit, numbered_files, numbered_path, write_json, write_text


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.txt"
    write_text(path, "old")
    assert atomic_write(path, lambda tmp: tmp.write_text("new")) == path
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "a.txt"
    write_text(path, "old")

    def fails(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, fails)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_write_temporary_ends_in_the_name(tmp_path):
    seen = []
    atomic_write(tmp_path / "model_3.weights.h5", lambda tmp: seen.append(tmp.name) or tmp.write_bytes(b"x"))
    assert seen[0].endswith("model_3.weights.h5") and seen[0].startswith(".")


def test_atomic_write_replaces_a_directory(tmp_path):
    path = tmp_path / "c.zarr"
    (path / "old").mkdir(parents=True)

    def write(tmp):
        (tmp / "new").mkdir(parents=True)

    atomic_write(path, write)
    assert [p.name for p in path.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["c.zarr"]


def test_write_json_formats(tmp_path):
    write_json(tmp_path / "a.json", {"b": [1, 2]})
    assert (tmp_path / "a.json").read_text() == json.dumps({"b": [1, 2]}, indent=2)
    write_json(tmp_path / "b.json", ["x"], indent=None, newline=True)
    assert (tmp_path / "b.json").read_text() == '["x"]\n'


def test_numbered_files(tmp_path):
    for name in ("model_10.weights.h5", "model_9.weights.h5", "model_x.weights.h5", "optimizer_9.npz",
                 ".tmp-1-0-model_11.weights.h5"):
        (tmp_path / name).write_text("")
    assert numbered_files(tmp_path, "model_{}.weights.h5") == [(9, tmp_path / "model_9.weights.h5"),
                                                               (10, tmp_path / "model_10.weights.h5")]
    assert numbered_files(tmp_path / "missing", "model_{}.weights.h5") == []
    assert numbered_path(tmp_path, "model_checkpoint_{}.keras", 5) == tmp_path / "model_checkpoint_5.keras"


def test_git_commit_is_a_sha_or_none():
    sha = git_commit()
    assert sha is None or (len(sha) == 40 and int(sha, 16) >= 0)
