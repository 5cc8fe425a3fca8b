"""Parquet and Feather partner files: exact round trips (int64 ids above 2^53, null ids), streaming
record batches, the JSON/CSV checks, `synful export` of a real run and `synful evaluate` reading them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synful.cli import main
from synful.config import fill_template
from synful.errors import SynfulError
from synful.io.partners import (ID_FIELDS, NO_ID, PARTNER_FIELDS, arrow_schema, empty_partners, read_partners,
                                read_partners_arrow, write_partners, write_partners_arrow)
from test_extract import make_run, random_prediction, reference

SUFFIXES = (".parquet", ".feather")


def _partners(n=7, seed=0):
    rng = np.random.default_rng(seed)
    a = empty_partners(n)
    a["id"] = np.arange(n) * 1_000_003 + 2 ** 62 + 1
    a["id"][1] = 2 ** 53 + 1
    a["id"][2] = 2 ** 63 - 1
    a["id"][3] = -(2 ** 63)
    for f in ("pre_z", "pre_y", "pre_x", "post_z", "post_y", "post_x"):
        a[f] = rng.integers(-(2 ** 40), 2 ** 40, n)
    a["score"] = rng.random(n)
    a["score"][0] = 5e-324  # smallest subnormal: still exact
    a["pre_seg_id"] = 2 ** 62 + 1 + np.arange(n)
    a["post_seg_id"] = 2 ** 53 + 1 + np.arange(n)
    a["pre_skel_id"][::2] = 2 ** 63 - 1 - np.arange(n)[::2]
    a["post_skel_id"][1] = 0
    a["pre_seg_id"][4] = NO_ID  # null in the file
    return a


def _table(path):
    return pq.read_table(path) if str(path).endswith(".parquet") else pa.ipc.open_file(str(path)).read_all()


def _write_table(table, path):
    if str(path).endswith(".parquet"):
        pq.write_table(table, path)
    else:
        with pa.ipc.new_file(str(path), table.schema) as w:
            w.write_table(table)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip_exact_with_big_ids_and_nulls(tmp_path, suffix):
    a = _partners()
    path = write_partners(a, tmp_path / f"p{suffix}")
    got = read_partners(path)
    assert got.dtype == a.dtype
    np.testing.assert_array_equal(got, a)
    assert got["id"][2] == 2 ** 63 - 1 and got["pre_seg_id"][0] == 2 ** 62 + 1
    t = _table(path)
    assert t.schema.equals(arrow_schema(), check_metadata=False)
    assert t.column_names == list(PARTNER_FIELDS)
    for f in ID_FIELDS:
        assert t.column(f).type == pa.int64()
        assert t.column(f).null_count == int((a[f] == NO_ID).sum())
    assert t.column("pre_seg_id")[4].as_py() is None and t.column("id")[0].as_py() == 2 ** 62 + 1
    # empty tables too
    np.testing.assert_array_equal(read_partners(write_partners(empty_partners(0), tmp_path / f"e{suffix}")),
                                  empty_partners(0))


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_written_in_record_batches_from_an_iterable(tmp_path, suffix):
    a = _partners(25, seed=1)
    path = write_partners_arrow(iter([a[:11], a[11:11], a[11:]]), tmp_path / f"p{suffix}", batch_rows=4)
    if suffix == ".parquet":
        md = pq.ParquetFile(path).metadata
        assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [4, 4, 3, 4, 4, 4, 2]
    else:
        r = pa.ipc.open_file(str(path))
        assert [r.get_batch(i).num_rows for i in range(r.num_record_batches)] == [4, 4, 3, 4, 4, 4, 2]
    np.testing.assert_array_equal(read_partners_arrow(path, batch_rows=3), a)
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_tables_from_other_tools(tmp_path, suffix):
    """Any integer width, optional columns absent or null, extra columns ignored; ids as in CSV."""
    path = tmp_path / f"x{suffix}"
    table = pa.table({
        "pre_z": pa.array([1, 2, 3], pa.int32()), "pre_y": pa.array([4, 5, 6], pa.uint16()),
        "pre_x": pa.array([7.0, 8.4, 9.6]),  # nm as floats: rounded, as the JSON reader does
        "post_z": [1, 2, 3], "post_y": [4, 5, 6], "post_x": pa.array([2 ** 63 - 1, 0, 1], pa.uint64()),
        "id": pa.array([None, 10, None], pa.int64()), "score": pa.array([0.5, None, 1], pa.float32()),
        "post_skel_id": pa.array([2.0, None, 3.0]), "nt_gaba": [0.1, 0.2, 0.3],
    })
    _write_table(table, path)
    got = read_partners(path)
    assert got["id"].tolist() == [0, 10, 2]
    assert got["pre_x"].tolist() == [7, 8, 10]
    assert got["post_x"].tolist() == [2 ** 63 - 1, 0, 1]
    assert got["score"].tolist() == [0.5, 0.0, 1.0]
    assert got["post_skel_id"].tolist() == [2, NO_ID, 3]
    assert (got["pre_seg_id"] == NO_ID).all()


def _with(a, suffix, tmp_path, **columns):
    t = pa.Table.from_batches([pa.RecordBatch.from_arrays(
        [pa.array(a[f], mask=(a[f] == NO_ID) if f in ID_FIELDS else None) for f in PARTNER_FIELDS],
        names=list(PARTNER_FIELDS))])
    for name, col in columns.items():
        if name in t.column_names:
            t = t.set_column(t.column_names.index(name), name, col)
        else:
            t = t.append_column(name, col)
    path = tmp_path / f"bad{suffix}"
    _write_table(t, path)
    return path


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_refused_like_json_and_csv(tmp_path, suffix):
    a = _partners(5)
    cases = [
        ({"score": pa.array([0.1, np.nan, 0.2, 0.3, 0.4])}, r"\[1\] score: expected a finite number, got nan"),
        ({"score": pa.array([0.1, 0.2, 0.3, np.inf, 0.4])}, r"\[3\] score: expected a finite number, got inf"),
        ({"post_y": pa.array([1.0, 2.0, -np.inf, 4.0, 5.0])}, r"\[2\] post_y: expected a finite number"),
        ({"pre_z": pa.array([1, 2, 3, None, 5], pa.int64())}, r"\[3\] pre_z: missing"),
        ({"id": pa.array([1, 2, 3, 2, 5], pa.int64())}, r"\[3\] id: duplicate id 2 \(first at record 1\)"),
        ({"id": pa.array([1, 2, 3, 2 ** 63, 5], pa.uint64())}, r"\[3\] id: 9223372036854775808 does not fit"),
        ({"pre_seg_id": pa.array([1.0, 2.5, 3.0, 4.0, 5.0])}, r"\[1\] pre_seg_id: expected an integer, got 2.5"),
        ({"post_seg_id": pa.array([1.0, 2.0, 2.0 ** 60, 4.0, 5.0])}, r"\[2\] post_seg_id: expected an integer"),
        ({"score": pa.array(["a", "b", "c", "d", "e"])}, r"\[0\] score: expected a number, got 'a'"),
    ]
    for columns, message in cases:
        path = _with(a, suffix, tmp_path, **columns)
        with pytest.raises(SynfulError, match=message) as e:
            read_partners(path)
        assert str(path) in str(e.value)
    t = _table(write_partners(a, tmp_path / f"ok{suffix}")).drop_columns(["post_x", "pre_y"])
    _write_table(t, tmp_path / f"cols{suffix}")
    with pytest.raises(SynfulError, match="missing column\\(s\\) post_x, pre_y"):
        read_partners(tmp_path / f"cols{suffix}")
    (tmp_path / f"junk{suffix}").write_bytes(b"not an arrow file at all")
    with pytest.raises(SynfulError, match="not a readable"):
        read_partners(tmp_path / f"junk{suffix}")
    with pytest.raises(SynfulError, match="partner file not found"):
        read_partners(tmp_path / f"none{suffix}")


def test_cli_export_of_a_run_and_evaluate_reads_it(tmp_path, capsys):
    ind_u8, vec = random_prediction((16, 64, 64), 12, seed=28)
    pdir = make_run(tmp_path, ind_u8, vec, block_shape=(64, 128, 128), context=(64, 64, 64))
    assert main(["extract", str(pdir), "--serial"]) == 0
    ref = reference(ind_u8, vec)
    assert len(ref) > 3
    for suffix in SUFFIXES:
        out = tmp_path / f"partners{suffix}"
        assert main(["export", str(pdir), str(out)]) == 0
        assert f"wrote {len(ref)} partners to {out}" in capsys.readouterr().out
        np.testing.assert_array_equal(read_partners(out), ref)
        assert _table(out).schema.equals(arrow_schema(), check_metadata=False)
    # evaluate: ground truth from the Parquet export, predictions from the Feather export
    ini = pdir / "predict_config.ini"
    ini.write_text(fill_template(ini.read_text(), {"Evaluation": {
        "gt_synlinks": str(tmp_path / "partners.parquet"), "pred_synlinks": str(tmp_path / "partners.feather")}}))
    assert main(["evaluate", str(pdir), "--out", str(tmp_path / "eval")]) == 0
    assert "fscore 1.0000" in capsys.readouterr().out
    # and a prediction file the metric must refuse (duplicate id) is refused with its name
    bad = ref.copy()
    bad["id"][1] = bad["id"][0]
    write_partners(bad, tmp_path / "bad.parquet")
    ini.write_text(fill_template(ini.read_text(), {"Evaluation": {"pred_synlinks": str(tmp_path / "bad.parquet")}}))
    assert main(["evaluate", str(pdir), "--out", str(tmp_path / "eval2")]) != 0
    err = capsys.readouterr().err
    assert "bad.parquet[1] id: duplicate id" in err


# --------------------------------------------------------------------------------------
# streamed export from a result store (Store.iter_batches)
# --------------------------------------------------------------------------------------

@pytest.fixture
def run_store(partner_store):
    return partner_store


def _n_batches(path) -> list[int]:
    if str(path).endswith(".parquet"):
        md = pq.ParquetFile(path).metadata
        return [md.row_group(i).num_rows for i in range(md.num_row_groups)]
    r = pa.ipc.open_file(str(path))
    return [r.get_batch(i).num_rows for i in range(r.num_record_batches)]


def test_store_export_streams_in_batches_and_round_trips(run_store, tmp_path, monkeypatch):
    a = _partners(2500, seed=3)
    for k, start in enumerate(range(0, len(a), 1000)):
        run_store.write_block(k, a[start:start + 1000])
    want = run_store.query()
    assert len(want) == len(a)
    np.testing.assert_array_equal(want, np.sort(a, order="id"))

    def whole_run(*args, **kwargs):
        raise AssertionError("export must stream through iter_batches, not load the run with query()")

    monkeypatch.setattr(type(run_store), "query", whole_run)
    for suffix in (*SUFFIXES, ".json", ".csv"):
        out = run_store.export(tmp_path / f"run{suffix}", batch_rows=300)
        np.testing.assert_array_equal(read_partners(out), want)
        if suffix in SUFFIXES:
            assert _n_batches(out) == [300] * 8 + [100]
            assert _table(out).schema.equals(arrow_schema(), check_metadata=False)
    # the CLI streams the same way (--batch-rows)
    from synful.store import SQLiteStore

    if isinstance(run_store, SQLiteStore):
        monkeypatch.setattr("synful.store.open_run_store", lambda d: run_store)
        run_store.close = lambda: None
        assert main(["export", str(tmp_path), str(tmp_path / "cli.feather"), "--batch-rows", "1000"]) == 0
        assert _n_batches(tmp_path / "cli.feather") == [1000, 1000, 500]


def _fill_sqlite_run(path, collection: str, n: int) -> np.ndarray:
    """``n`` partners written by SQLite itself (a recursive CTE: seconds, not the minute Python rows take);
    returns the same partners computed by numpy."""
    import sqlite3

    from synful.store import SQLiteStore

    s = SQLiteStore(path, collection)
    s.create()
    s.close()
    base = 2 ** 53 + 1
    conn = sqlite3.connect(str(path))
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL").fetchall():
        conn.execute(f'DROP INDEX "{name}"')  # the export needs none; inserting 1 M rows goes 5 x faster
    conn.execute(f"""
        WITH RECURSIVE c(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM c WHERE x + 1 < {n})
        INSERT INTO "{collection}" (id, pre_z, pre_y, pre_x, post_z, post_y, post_x, score, pre_seg_id, post_seg_id,
                                    pre_skel_id, post_skel_id, block_id)
        SELECT {base} + 3 * x, x % 997, (x * 7) % 100003, x * 40, x % 991, (x * 11) % 100019, x * 40 + 8,
               x * 0.001, CASE WHEN x % 5 = 0 THEN NULL ELSE x * 13 END, {2 ** 62} + x,
               CASE WHEN x % 3 = 0 THEN NULL ELSE x END, NULL, x / 10000 FROM c""")
    conn.commit()
    conn.close()
    x = np.arange(n, dtype=np.int64)
    a = empty_partners(n)
    a["id"] = base + 3 * x
    a["pre_z"], a["pre_y"], a["pre_x"] = x % 997, (x * 7) % 100003, x * 40
    a["post_z"], a["post_y"], a["post_x"] = x % 991, (x * 11) % 100019, x * 40 + 8
    a["score"] = x * 0.001
    a["pre_seg_id"] = np.where(x % 5 == 0, NO_ID, x * 13)
    a["post_seg_id"] = 2 ** 62 + x
    a["pre_skel_id"] = np.where(x % 3 == 0, NO_ID, x)
    return a


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def test_export_of_a_million_partners_holds_one_batch(tmp_path):
    """1 M partners (96 MB as records; a whole-run query held that plus ~0.7 GB of Python rows while fetching):
    the export's peak resident memory -- Python, SQLite and Arrow together -- grows by well under a quarter
    of the table."""
    import time

    from synful.store import SQLiteStore

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set size (VmHWM), Linux >= 4.0
    except OSError:
        pytest.skip("needs /proc/self/clear_refs to measure the peak resident memory")
    n, rows = 1_000_000, 20_000
    want = _fill_sqlite_run(tmp_path / "big.sqlite", "partners_big", n)
    store = SQLiteStore(tmp_path / "big.sqlite", "partners_big")
    # the Parquet writer's and memory pools' one-time set-up (~25 MB on the first file) is not the export's
    write_partners([want[:rows], want[rows:2 * rows]], tmp_path / "warm-up.parquet", batch_rows=rows)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_bytes("VmRSS")
    t0 = time.perf_counter()
    out = store.export(tmp_path / "big.parquet", batch_rows=rows)
    seconds = time.perf_counter() - t0
    growth = _status_bytes("VmHWM") - before
    print(f"export of {n} partners to Parquet: {seconds:.1f} s, peak resident memory +{growth / 1e6:.1f} MB "
          f"(table {want.nbytes / 1e6:.0f} MB)")
    assert growth < want.nbytes / 4, (growth, want.nbytes)
    assert _n_batches(out) == [rows] * (n // rows)
    np.testing.assert_array_equal(read_partners(out), want)
