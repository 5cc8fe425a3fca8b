"""Neurotransmitter data: document store (SQLite and MongoDB wire protocol), import, splits."""

import json
from collections import defaultdict

import pytest

from synful.cli import main as cli_main
from synful.transmitters.data import DataImportError, export_collections, import_collections
from synful.transmitters.db import HEMILINEAGES, SKELETONS, SYNAPSES, StoreError, open_store
from synful.transmitters.splits import (PARTS, SplitError, create_split, make_split, read_split, split_synapses,
                                        synapse_labels)

TYPES = ("gaba", "acetylcholine", "glutamate")


def _records(n_hl=6, skels_per_hl=4, syn_per_skel=(3, 9), seed=0):
    """Hemilineages with one transmitter each; skeletons of varying size; a few unusable skeletons."""
    import numpy as np

    rng = np.random.default_rng(seed)
    hls, skels, syns = [], [], []
    sid = 0
    for h in range(n_hl):
        hls.append({"hemi_lineage_id": 100 + h, "hemi_lineage_name": f"HL{h}"})
        nt = TYPES[h % len(TYPES)]
        for k in range(skels_per_hl):
            skel = 1000 + h * 10 + k
            skels.append({"skeleton_id": skel, "nt_known": [nt], "hemi_lineage_id": 100 + h})
            for _ in range(int(rng.integers(*syn_per_skel))):
                syns.append({"synapse_id": sid, "x": float(rng.integers(0, 4000)), "y": int(rng.integers(0, 4000)),
                             "z": int(rng.integers(0, 400)), "skeleton_id": skel, "prepost": "pre",
                             "brain_region": "MB"})
                sid += 1
    # no known transmitter, two transmitters, a transmitter outside synapse_types, no hemilineage
    for skel, nts, hl in ((9001, [], None), (9002, ["gaba", "glutamate"], 100), (9003, ["dopamine"], 101),
                          (9004, ["gaba"], None)):
        skels.append({"skeleton_id": skel, "nt_known": nts, "hemi_lineage_id": hl})
        for _ in range(4):
            syns.append({"synapse_id": sid, "x": 1, "y": 2, "z": 3, "skeleton_id": skel})
            sid += 1
    return syns, skels, hls


@pytest.fixture(params=["sqlite", "mongodb"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = open_store("sqlite:///" + str(tmp_path / "t.sqlite"))
    else:
        s = open_store(request.getfixturevalue("mongodb_url"))
    db = f"synister_{tmp_path.name[-20:]}".replace("-", "_")
    # nx-27017 (the test MongoDB server) keeps one namespace for all databases: start from empty collections
    for name in (SYNAPSES, SKELETONS, HEMILINEAGES, "splits", "split_info"):
        s.collection(db, name).drop()
    yield s, db
    s.close()


def _write_exports(tmp_path, syns, skels, hls):
    paths = {}
    for name, recs in ((SYNAPSES, syns), (SKELETONS, skels), (HEMILINEAGES, hls)):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(recs))
    return paths


def test_import_round_trip(store, tmp_path):
    s, db = store
    syns, skels, hls = _records()
    paths = _write_exports(tmp_path, syns, skels, hls)
    summary = import_collections(s, db, synapses=paths[SYNAPSES], skeletons=paths[SKELETONS],
                                 hemilineages=paths[HEMILINEAGES])
    assert (summary.synapses, summary.skeletons, summary.hemilineages) == (len(syns), len(skels), len(hls))
    out = export_collections(s, db, tmp_path / "export")
    back = {n: json.loads(out[n].read_text()) for n in out}
    assert back[HEMILINEAGES] == hls
    assert [dict(r, nt_known=list(r["nt_known"])) for r in back[SKELETONS]] == skels
    assert back[SYNAPSES] == [dict(r, x=int(r["x"])) for r in syns]  # 1.0 nm is stored as the integer 1
    # the export imports again, unchanged
    import_collections(s, db, synapses=out[SYNAPSES], skeletons=out[SKELETONS], hemilineages=out[HEMILINEAGES],
                       overwrite=True)
    assert s.collection(db, SYNAPSES).find() == back[SYNAPSES]
    # existing collections are only replaced when asked
    with pytest.raises(StoreError, match="exists"):
        import_collections(s, db, skeletons=paths[SKELETONS])
    import_collections(s, db, skeletons=skels[:3], overwrite=True)
    assert s.collection(db, SKELETONS).count() == 3


def test_import_dict_and_json_lines(tmp_path):
    s = open_store("sqlite:///" + str(tmp_path / "t.sqlite"))
    # Synister's export: {id: attributes}; mongoexport's default: one record per line
    (tmp_path / "skel.json").write_text(json.dumps({"7": {"nt_known": "GABA", "hemi_lineage_id": None}}))
    (tmp_path / "syn.jsonl").write_text('{"synapse_id": 1, "x": 1, "y": 2, "z": 3, "skeleton_id": 7}\n'
                                        '{"synapse_id": 2, "x": 4, "y": 5, "z": 6.5, "skeleton_id": 7}\n')
    import_collections(s, "db", synapses=tmp_path / "syn.jsonl", skeletons=tmp_path / "skel.json")
    assert s.collection("db", SKELETONS).find() == [{"skeleton_id": 7, "nt_known": ["gaba"], "hemi_lineage_id": None}]
    assert s.collection("db", SYNAPSES).find({"synapse_id": 2})[0]["z"] == 6.5


@pytest.mark.parametrize("what, mutate, message", [
    ("synapses", lambda r: r[5].update(x="far"), r"synapses.json record 5 \(synapse_id 5\): field 'x': expected a number"),
    ("synapses", lambda r: r[3].pop("skeleton_id"), r"record 3 \(synapse_id 3\): field 'skeleton_id' is missing"),
    ("synapses", lambda r: r[2].update(x=float("nan")), r"record 2 .*field 'x': expected a finite number"),
    ("synapses", lambda r: r[4].update(synapse_id=1), r"record 4 \(synapse_id 1\): field 'synapse_id': duplicate of record 1"),
    ("synapses", lambda r: r[0].update(prepost="both"), r"record 0 .*field 'prepost': expected 'pre' or 'post'"),
    ("synapses", lambda r: r[6].update(skeleton_id=5), r"record 6 .*field 'skeleton_id': skeleton 5 is not in"),
    ("skeletons", lambda r: r[1].update(nt_known=[3]), r"skeletons.json record 1 \(skeleton_id 1001\): field 'nt_known'"),
    ("skeletons", lambda r: r[2].update(hemi_lineage_id=77), r"record 2 .*'hemi_lineage_id': hemilineage 77 is not in"),
    ("hemilineages", lambda r: r.__setitem__(1, "HL1"), r"hemilineages.json record 1: expected an object, got str"),
])
def test_malformed_records_import_nothing(tmp_path, what, mutate, message):
    syns, skels, hls = _records()
    recs = {SYNAPSES: syns, SKELETONS: skels, HEMILINEAGES: hls}
    mutate(recs[what])
    paths = _write_exports(tmp_path, *recs.values())
    s = open_store("sqlite:///" + str(tmp_path / "t.sqlite"))
    with pytest.raises(DataImportError, match=message):
        import_collections(s, "db", synapses=paths[SYNAPSES], skeletons=paths[SKELETONS],
                           hemilineages=paths[HEMILINEAGES])
    assert s.list_collections("db") == []
    # the same through the CLI: one error line, exit 2, nothing written
    r = cli_main(["transmitter", "import", "sqlite:///" + str(tmp_path / "cli.sqlite"), "--database", "db",
                  "--synapses", str(paths[SYNAPSES]), "--skeletons", str(paths[SKELETONS]),
                  "--hemilineages", str(paths[HEMILINEAGES])])
    assert r == 2
    assert open_store("sqlite:///" + str(tmp_path / "cli.sqlite")).list_collections("db") == []


def test_unreadable_export(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    s = open_store("sqlite:///" + str(tmp_path / "t.sqlite"))
    with pytest.raises(DataImportError, match="bad.json: not JSON"):
        import_collections(s, "db", synapses=tmp_path / "bad.json")


def _groups(syns, skels, parts, kind):
    hl = {s["skeleton_id"]: s["hemi_lineage_id"] for s in skels}
    where = defaultdict(set)
    for s in syns:
        if s["synapse_id"] in parts:
            key = s["skeleton_id"] if kind == "skeleton" else (hl[s["skeleton_id"]] or ("skel", s["skeleton_id"]))
            where[key].add(parts[s["synapse_id"]])
    return where


@pytest.mark.parametrize("kind", ["random", "skeleton", "hemilineage"])
def test_split_invariants(kind):
    syns, skels, hls = _records(n_hl=12, skels_per_hl=5)
    fr = (0.6, 0.2, 0.2)
    parts = make_split(syns, skels, kind=kind, fractions=fr, seed=3, synapse_types=TYPES)
    labels = synapse_labels(syns, skels, TYPES)
    # exactly the labelled synapses are split: not the no/multi/outside-transmitter skeletons
    assert set(parts) == set(labels)
    assert {s["skeleton_id"] for s in syns if s["synapse_id"] in parts}.isdisjoint({9001, 9002, 9003})
    assert set(parts.values()) == set(PARTS)
    # deterministic by seed, independent of input order; another seed differs
    assert make_split(syns[::-1], skels[::-1], kind=kind, fractions=fr, seed=3, synapse_types=TYPES) == parts
    assert make_split(syns, skels, kind=kind, fractions=fr, seed=4, synapse_types=TYPES) != parts
    # stratified: every class appears in every part, at roughly its fraction
    for cls in TYPES:
        ids = [i for i, c in labels.items() if c == cls]
        for part, f in zip(PARTS, fr):
            share = sum(parts[i] == part for i in ids) / len(ids)
            assert share > 0 and abs(share - f) < (0.05 if kind == "random" else 0.2), (cls, part, share)
    if kind != "random":
        # a skeleton (and for hemilineage splits, a hemilineage) never appears in two parts
        assert all(len(p) == 1 for p in _groups(syns, skels, parts, "skeleton").values())
        if kind == "hemilineage":
            assert all(len(p) == 1 for p in _groups(syns, skels, parts, "hemilineage").values())


def test_split_neither_class_and_errors():
    syns, skels, _ = _records()
    labels = synapse_labels(syns, skels, TYPES, neither_class=True)
    assert {labels[s["synapse_id"]] for s in syns if s["skeleton_id"] == 9003} == {"neither"}
    with pytest.raises(SplitError, match="fractions"):
        make_split(syns, skels, fractions=(0.5, 0.2, 0.2), synapse_types=TYPES)
    with pytest.raises(SplitError, match="split kind 'neuron'"):
        make_split(syns, skels, kind="neuron", synapse_types=TYPES)
    with pytest.raises(SplitError, match="no synapse"):
        make_split(syns, skels, synapse_types=("histamine",))
    # a zero fraction leaves that part empty
    parts = make_split(syns, skels, kind="skeleton", fractions=(0.8, 0.0, 0.2), synapse_types=TYPES)
    assert "validation" not in parts.values()


def test_stored_split(store):
    s, db = store
    syns, skels, hls = _records()
    import_collections(s, db, synapses=syns, skeletons=skels, hemilineages=hls)
    info = create_split(s, db, "by_hl", kind="hemilineage", fractions=(0.5, 0.25, 0.25), seed=1, synapse_types=TYPES)
    assert sum(sum(c.values()) for c in info.counts.values()) == len(synapse_labels(syns, skels, TYPES))
    info2, parts = read_split(s, db, "by_hl")
    assert info2.kind == "hemilineage" and info2.synapse_types == TYPES and parts == make_split(
        syns, skels, kind="hemilineage", fractions=(0.5, 0.25, 0.25), seed=1, synapse_types=TYPES)
    test = split_synapses(s, db, "by_hl", "test")
    assert test and all(parts[x["synapse_id"]] == "test" and x["label"] in TYPES for x in test)
    with pytest.raises(StoreError, match="split 'by_hl' exists"):
        create_split(s, db, "by_hl", kind="random", synapse_types=TYPES)
    create_split(s, db, "by_hl", kind="random", synapse_types=TYPES, overwrite=True)
    assert read_split(s, db, "by_hl")[0].kind == "random"
    assert len(read_split(s, db, "by_hl")[1]) == len(parts)
    with pytest.raises(SplitError, match="no split named 'nope'.*by_hl"):
        read_split(s, db, "nope")
