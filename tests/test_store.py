"""Result store: the same behaviour from SQLite and MongoDB (wire-protocol server on 127.0.0.1)."""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import time
import uuid

import numpy as np
import pytest
from funlib.geometry import Roi

from synful.io.partners import NO_ID, PARTNER_DTYPE, empty_partners, read_partners
from synful.store import SQLiteStore, MongoStore, StoreError, open_store, redact_url

BIG = 2 ** 62 + 12345  # above 2**53: would be corrupted by any float round trip


def partners(ids, block=0):
    p = empty_partners(len(ids))
    p["id"] = ids
    for i, pid in enumerate(ids):
        p[i]["post_z"], p[i]["post_y"], p[i]["post_x"] = 40 * (pid % 50), 4 * (pid % 7), 4 * (pid % 11)
        p[i]["pre_z"], p[i]["pre_y"], p[i]["pre_x"] = p[i]["post_z"], p[i]["post_y"] + 100, p[i]["post_x"] - 100
    p["score"] = np.asarray(ids, dtype=float) / 10 + block
    return p


@pytest.fixture(params=["sqlite", "mongodb"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/partners.sqlite"
    return request.getfixturevalue("mongodb_url")


@pytest.fixture
def store(store_url):
    s = open_store(store_url, database="synful_test", collection=f"partners_{uuid.uuid4().hex[:10]}")
    s.create()
    yield s
    s.drop()
    s.close()


def test_create_write_query_count_iter(store):
    assert store.count() == 0
    store.create()  # idempotent
    a, b = partners([1, 2, 3], 0), partners([10, 11], 1)
    store.write_block(0, a)
    store.write_block(1, b)
    assert store.count() == 5
    got = store.query()
    assert got.dtype == PARTNER_DTYPE
    np.testing.assert_array_equal(got, np.sort(np.concatenate([a, b]), order="id"))
    assert [int(p["id"]) for p in store] == [1, 2, 3, 10, 11]
    assert store.block_ids().tolist() == [0, 1]


def test_rewrite_replaces_block(store):
    store.write_block(0, partners([1, 2, 3]))
    store.write_block(1, partners([7]))
    store.write_block(0, partners([2, 4], block=5))  # 1 and 3 gone, 2 updated, 4 new
    got = store.query()
    assert got["id"].tolist() == [2, 4, 7]
    assert got["score"][0] == pytest.approx(5.2)
    store.write_block(0, empty_partners(0))
    assert store.query()["id"].tolist() == [7]


def test_query_roi_by_post_site(store):
    p = partners(list(range(100)))
    store.write_block(0, p)
    roi = Roi((40, 4, 0), (400, 12, 24))
    got = store.query(roi)
    inside = [roi.contains((int(q["post_z"]), int(q["post_y"]), int(q["post_x"]))) for q in p]
    assert 0 < sum(inside) < 100
    np.testing.assert_array_equal(got, np.sort(p[np.array(inside)], order="id"))


def test_int64_ids_and_missing_ids_round_trip(store, tmp_path):
    p = partners([BIG, 5])
    p[0]["pre_seg_id"], p[0]["post_seg_id"] = BIG, -BIG
    p[0]["pre_skel_id"] = 2 ** 63 - 1
    p[1]["post_seg_id"] = 0
    store.write_block(3, p)
    got = store.query()
    np.testing.assert_array_equal(got, np.sort(p, order="id"))
    assert got[got["id"] == 5]["pre_seg_id"][0] == NO_ID
    for name in ("out.json", "out.csv"):
        path = store.export(tmp_path / name)
        np.testing.assert_array_equal(read_partners(path), got)
    link = json.loads((tmp_path / "out.json").read_text())[0]
    assert set(link) >= {"location_pre", "location_post", "id_segm_pre", "id_segm_post", "score"}


def test_drop_only_when_asked(store_url):
    name = f"partners_{uuid.uuid4().hex[:10]}"
    with open_store(store_url, database="synful_test", collection=name) as s:
        s.create()
        s.write_block(0, partners([1]))
    with open_store(store_url, database="synful_test", collection=name) as s:
        s.create()  # reopening and creating again keeps the data
        assert s.count() == 1
        s.drop()
        assert s.count() == 0


def test_bad_partners_rejected(store):
    p = partners([1, 1])
    with pytest.raises(StoreError, match="duplicate"):
        store.write_block(0, p)
    p = partners([1])
    p["score"] = np.nan
    with pytest.raises(StoreError, match="NaN"):
        store.write_block(0, p)
    with pytest.raises(StoreError, match="PARTNER_DTYPE"):
        store.write_block(0, np.zeros(3))
    assert store.count() == 0


def _writer(url, collection, worker, n_blocks, per_block):
    # every block is written by both processes, twice; ids overlap between blocks too
    with open_store(url, database="synful_test", collection=collection) as s:
        s.create()
        for rep in range(2):
            for b in range(n_blocks):
                blk = (b + worker) % n_blocks
                ids = list(range(blk * per_block, (blk + 1) * per_block))
                s.write_block(blk, partners(ids))


def test_two_processes_leave_no_duplicates(store_url):
    name = f"partners_{uuid.uuid4().hex[:10]}"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(store_url, name, w, 8, 50)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with open_store(store_url, database="synful_test", collection=name) as s:
        got = s.query()
        assert s.count() == 400
        s.drop()
    assert got["id"].tolist() == list(range(400))


def test_unreachable_mongodb_fails_fast_without_leaking_credentials():
    from conftest import free_port

    url = f"mongodb://someone:s3cret-pw@127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(StoreError) as e:
        open_store(url, collection="partners_x", timeout=1.0)
    assert time.monotonic() - t0 < 30
    assert "cannot reach MongoDB" in str(e.value) and "127.0.0.1" in str(e.value)
    assert "s3cret" not in str(e.value) and "someone" not in str(e.value)


def test_credentials_from_file_and_env(mongodb_url, tmp_path, monkeypatch):
    name = f"partners_{uuid.uuid4().hex[:10]}"
    secret = tmp_path / "mongo_url"
    secret.write_text(mongodb_url + "\n")
    with open_store("mongodb://ignored:1", database="synful_test", collection=name,
                    credentials_file=secret) as s:
        assert isinstance(s, MongoStore)
        s.create()
        s.write_block(0, partners([1]))
    monkeypatch.setenv("SYNFUL_TEST_URL", mongodb_url)
    with open_store("mongodb://ignored:1", database="synful_test", collection=name,
                    credentials_env="SYNFUL_TEST_URL") as s:
        assert s.count() == 1
        s.drop()
    with pytest.raises(StoreError, match="NOT_SET_ANYWHERE"):
        open_store("mongodb://x", collection=name, credentials_env="NOT_SET_ANYWHERE")
    with pytest.raises(StoreError, match="cannot read"):
        open_store("mongodb://x", collection=name, credentials_file=tmp_path / "missing")


def test_url_handling(tmp_path):
    assert redact_url("mongodb://u:p@h:1/db") == "mongodb://***@h:1/db"
    assert redact_url("sqlite:///a.sqlite") == "sqlite:///a.sqlite"
    s = open_store("sqlite:///sub/p.sqlite", collection="partners_a", base_dir=tmp_path)
    assert isinstance(s, SQLiteStore) and s.path == tmp_path / "sub" / "p.sqlite"
    s.close()
    with pytest.raises(StoreError, match="expected sqlite"):
        open_store("postgres://h", collection="c")
    with pytest.raises(StoreError, match="collection name"):
        open_store("sqlite:///x.sqlite", collection="bad name;", base_dir=tmp_path)


def test_run_record_belongs_to_one_run_and_is_not_a_partner(store):
    assert store.run_record() is None
    a = {"run_id": "run-a", "predict_dir": "/x/a", "signature": "s1"}
    assert store.claim_run(a) is None
    store.write_block(0, partners([1, 2]))
    assert store.claim_run({**a, "signature": "s2"})["signature"] == "s1"  # the same run updates it
    assert store.claim_run({"run_id": "run-b", "predict_dir": "/y/a"})["run_id"] == "run-a"  # another run does not
    assert store.run_record() == {**a, "signature": "s2"}
    assert store.count() == 2 and store.query()["id"].tolist() == [1, 2] and store.block_ids().tolist() == [0]
    store.drop()
    assert store.run_record() is None and store.count() == 0


def test_sqlite_reading_writes_nothing(tmp_path):
    path = tmp_path / "p.sqlite"
    with open_store(f"sqlite:///{path}", collection="partners_a") as s:
        assert s.count() == 0 and len(s.query()) == 0
    assert not path.exists()  # reading a store that does not exist creates nothing
    writer = open_store(f"sqlite:///{path}", collection="partners_a")
    writer.create()
    writer.write_block(0, partners([1, 2, 3]))
    # a writer attached: read through its log (sees what it committed)
    with open_store(f"sqlite:///{path}", collection="partners_a") as s:
        assert s.query()["id"].tolist() == [1, 2, 3]
    writer.close()
    assert not (tmp_path / "p.sqlite-wal").exists()
    before = sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in tmp_path.iterdir())
    # no writer: read as immutable, no lock, no -wal / -shm (old code created both, and needed write access)
    with open_store(f"sqlite:///{path}", collection="partners_a") as s:
        assert s.count() == 3 and s.block_ids().tolist() == [0] and len(s.query()) == 3
    assert sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in tmp_path.iterdir()) == before


def test_iter_batches_streams_in_id_order(store):
    # ids on both sides of 2**31 and 2**53 and negative: keyset pagination must not skip or repeat any
    ids = [-5, 3, 7, 2 ** 31 - 1, 2 ** 31, 2 ** 31 + 1, 2 ** 40, 2 ** 53 + 1, BIG, BIG + 1, 12, 13, 14]
    store.write_block(0, partners(ids[:7], 0))
    store.write_block(1, partners(ids[7:], 1))
    store.claim_run({"run_id": "r1"})  # the run record is never a partner
    whole = store.query()
    for rows in (1, 2, 5, 13, 100):
        batches = list(itertools.islice(store.iter_batches(rows), 100))  # bounded: a repeating page fails, not hangs
        assert all(b.dtype == PARTNER_DTYPE and 0 < len(b) <= rows for b in batches)
        assert len(batches) == -(-len(ids) // rows)
        np.testing.assert_array_equal(np.concatenate(batches), whole)
    assert [int(p["id"]) for p in store] == sorted(ids)
    roi = Roi((0, 0, 0), (800, 20, 20))
    for site in ("post", "pre"):
        got = np.concatenate(list(store.iter_batches(2, roi, site=site)) or [empty_partners(0)])
        np.testing.assert_array_equal(got, store.query(roi, site=site))
    assert len(store.query(roi, site="pre")) < len(store.query(roi, site="post"))  # pre sites: y + 100
    with pytest.raises(StoreError, match="batch_rows"):
        next(store.iter_batches(0))
    with pytest.raises(StoreError, match="site"):
        store.query(roi, site="both")


def test_set_skel_ids_one_side_at_a_time(store):
    store.write_block(0, partners([1, 2, 3]))
    store.set_skel_ids([1, 3], pre_skel_ids=[BIG, 5])
    store.set_skel_ids([2, 3, 99], post_skel_ids=[7, NO_ID, 8])  # 99: not in the collection, skipped
    got = store.query()
    assert got["pre_skel_id"].tolist() == [BIG, NO_ID, 5]
    assert got["post_skel_id"].tolist() == [NO_ID, 7, NO_ID]
    store.set_skel_ids([1], [NO_ID], [4])
    assert store.query()["pre_skel_id"][0] == NO_ID and store.query()["post_skel_id"][0] == 4
    with pytest.raises(StoreError, match="2 post skeleton ids for 1"):
        store.set_skel_ids([1], post_skel_ids=[1, 2])


def test_mongodb_paging_indexes_id_of_older_collections(mongodb_url, monkeypatch):
    import pymongo
    from pymongo.collection import Collection

    made = []
    create_index = Collection.create_index
    monkeypatch.setattr(Collection, "create_index", lambda self, keys, **kw: made.append((self.name, keys)) or
                        create_index(self, keys, **kw))

    name = f"partners_{uuid.uuid4().hex[:10]}"
    s = open_store(mongodb_url, database="synful_test", collection=name)
    assert list(s.iter_batches(10)) == []  # a missing collection stays missing
    client = pymongo.MongoClient(mongodb_url)
    col = client["synful_test"][name]
    assert name not in client["synful_test"].list_collection_names()
    p = partners([5, 1, 2 ** 40, 3])
    col.insert_many([{**r, "_id": r["id"], "block_id": 0} for r in
                     ({f: (None if int(x[f]) == NO_ID and f.endswith("_id") and f != "id" else x[f].item())
                       for f in p.dtype.names} for x in p)])  # as an older synful wrote it: no index on id
    np.testing.assert_array_equal(np.concatenate(list(s.iter_batches(3))), np.sort(p, order="id"))
    assert made == [(name, "id")]  # once, not per batch (nx-27017 lists no secondary indexes to check instead)
    keys = [list(ix["key"]) for ix in col.list_indexes()]
    assert keys == [["_id"]] or ["id"] in keys
    list(s.iter_batches(3))
    assert len(made) == 1
    s.drop()
    s.close()
    client.close()


@pytest.mark.parametrize("opener", ["partners", "transmitters"])
def test_refused_credentials_are_one_store_error_line(mongodb_url, opener):
    from synful.transmitters import db as transmitter_db

    host = mongodb_url.split("://", 1)[1].split("/")[0].split("@")[-1]
    url = f"mongodb://synful:p%2Fs3cret%40x@{host}/?authSource=admin"  # percent-escaped: a valid URL
    with pytest.raises(StoreError) as e:
        if opener == "partners":
            open_store(url, collection="partners_x", timeout=2.0)
        else:
            transmitter_db.open_store(url)
    msg = str(e.value)
    assert "\n" not in msg and "s3cret" not in msg and "synful:" not in msg, msg
    assert f"mongodb://***@{host}" in msg and ("authenticat" in msg.lower() or "credentials" in msg), msg
