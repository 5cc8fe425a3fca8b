"""A newcomer's path through the neurotransmitter workflow on `synful transmitter synthetic` data.

Each test pins one step that used to trip a first run: the README's step-by-step block, synthetic data
whose voxel size the default config expects, a missing store, a split with an empty part, ``python
train.py`` without an iteration count, the config file named in train.py, and ids beyond int64.
"""

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from synful.cli import main as cli_main
from synful.config import TransmitterTraining, read_transmitter_train_config
from synful.scaffold import create_train_setup, template_text
from synful.transmitters.data import DataImportError, import_collections
from synful.transmitters.db import HEMILINEAGES, SKELETONS, SYNAPSES, StoreError, open_store, resolve_url
from synful.transmitters.splits import SplitError, create_split, read_split

ROOT = Path(__file__).resolve().parent.parent
TYPES = ("gaba", "acetylcholine", "glutamate")


def _readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = re.split(r"\n##+ ", text.split("### Neurotransmitter workflow", 1)[1], maxsplit=1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the subsection holds exactly one bash block"
    return blocks[0]


def test_readme_workflow_block_is_complete_and_consistent():
    text = (ROOT / "README.md").read_text()
    assert text.index("- **Neurotransmitters**") < text.index("### Neurotransmitter workflow") \
        < text.index("## Cluster execution")
    block = _readme_block()
    commands = [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()
                and not line.lstrip().startswith("#")]
    steps = ["synful transmitter synthetic", "synful transmitter import", "synful transmitter split",
             "python prepare_training.py", "python train.py", "python prepare_prediction.py",
             "synful transmitter predict", "synful transmitter evaluate"]
    at = [next(i for i, c in enumerate(commands) if step in c) for step in steps]
    assert at == sorted(at), "steps in workflow order"
    for c in commands:
        assert not c.endswith("\\"), "one command per line"
        if re.search(r"(^|[;&(]\s*)cd ", c):
            assert c.startswith("(") and c.endswith(")"), f"cd only inside a subshell: {c}"
    # the import writes where the default store_url of the scaffolded setup points
    exp = re.search(r"prepare_training\.py -e (\S+) -t (\d+) --kind transmitter", block)
    assert exp, "prepare_training.py --kind transmitter"
    setup = ROOT / "experiments" / exp.group(1) / "02_train" / f"setup_t{exp.group(2)}"
    default_store = resolve_url(TransmitterTraining.__dataclass_fields__["store_url"].default, base_dir=setup)
    imported = re.search(r"synful transmitter import (\S+)", block).group(1)
    assert resolve_url(imported, base_dir=ROOT) == default_store
    split = re.search(r"synful transmitter split (\S+) .*--name (\S+)", block)
    assert resolve_url(split.group(1), base_dir=ROOT) == default_store
    assert split.group(2) == TransmitterTraining.__dataclass_fields__["split_name"].default
    # the synthetic data land where the default raw_container points
    data = re.search(r"synful transmitter synthetic (\S+)", block).group(1)
    raw = TransmitterTraining.__dataclass_fields__["raw_container"].default
    assert (setup / raw).resolve() == (ROOT / data / "raw.zarr").resolve()
    # README prose names the store file and says the import writes it
    prose = text.split("### Neurotransmitter workflow", 1)[1].split("```bash", 1)[0]
    assert "01_data/transmitters.sqlite" in prose and "import" in prose


# ---- 2. synthetic data fit the default config -------------------------------------------------------------------

def test_synthetic_voxel_size_is_the_default_configs(tmp_path):
    from synful.cli import build_parser
    from synful.transmitters.synthetic_export import write_synthetic_dataset
    from synful.transmitters.train import open_raw

    cfg_voxel = TransmitterTraining.__dataclass_fields__["voxel_size"].default
    args = build_parser().parse_args(["transmitter", "synthetic", str(tmp_path)])
    assert tuple(args.voxel_size) == tuple(cfg_voxel) == (40, 4, 4)
    # the CLI's default volume holds the default 16 x 160 x 160 cube
    assert all(s >= i for s, i in zip(args.shape, TransmitterTraining.__dataclass_fields__["input_shape"].default))
    paths = write_synthetic_dataset(tmp_path / "d", shape=(12, 200, 200), seed=0)  # default voxel size
    raw = open_raw(paths["raw"], "volumes/raw", cfg_voxel, "test")
    assert tuple(raw.voxel_size) == (40, 4, 4)


# ---- 3. a missing store is named, not created ------------------------------------------------------------------

def _transmitter_setup(base: Path, **values) -> Path:
    ov = {"transmitter_train_config.ini": {"TransmitterTraining": values}} if values else None
    return create_train_setup(base, "nt", 0, kind="transmitter", overrides=ov)


def test_training_against_a_missing_store_names_it_and_creates_nothing(tmp_path, capsys):
    setup = _transmitter_setup(tmp_path)
    store_file = tmp_path / "nt" / "01_data" / "transmitters.sqlite"
    assert cli_main(["transmitter", "train", str(setup), "--iterations", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert str(store_file) in err and "transmitter_train_config.ini [TransmitterTraining] store_url" in err
    assert "synful transmitter import" in err
    assert not store_file.exists()
    # a split against a missing store neither
    assert cli_main(["transmitter", "split", f"sqlite:///{store_file}", "--name", "skeleton"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(store_file) in err and "synful transmitter import" in err
    assert not store_file.exists() and not store_file.parent.joinpath("transmitters.sqlite-wal").exists()


def test_opening_a_store_creates_nothing_until_it_writes(tmp_path):
    path = tmp_path / "sub" / "t.sqlite"
    with open_store(f"sqlite:///{path}") as s:
        assert not s.exists("db", SYNAPSES) and s.collection("db", SYNAPSES).find() == []
    assert not path.exists() and not path.parent.exists()
    with pytest.raises(DataImportError):
        with open_store(f"sqlite:///{path}") as s:
            import_collections(s, "db", synapses=[{"synapse_id": 1}])
    assert not path.exists()
    with pytest.raises(StoreError, match=f"{re.escape(str(path))}: no such store file.*synful transmitter import"):
        open_store(f"sqlite:///{path}", must_exist=True)


def test_a_store_without_synapses_says_to_import_first(mongodb_url, tmp_path):
    db = f"newcomer_{tmp_path.name[-12:]}".replace("-", "_")
    with open_store(mongodb_url) as s:
        for name in (SYNAPSES, "split_info"):
            s.collection(db, name).drop()
        with pytest.raises(SplitError, match=rf"{db}\.synapses: no synapses \(run `synful transmitter import`"):
            read_split(s, db, "skeleton")


# ---- 4. splits whose parts miss their fractions ----------------------------------------------------------------

def _records(hls_per_class=2, skels_per_hl=3, syns_per_skel=4):
    hls, skels, syns = [], [], []
    for c, nt in enumerate(TYPES):
        for h in range(hls_per_class):
            hl = 100 * (c + 1) + h
            hls.append({"hemi_lineage_id": hl, "hemi_lineage_name": f"{nt}_{h}"})
            for k in range(skels_per_hl):
                skel = 10 * hl + k
                skels.append({"skeleton_id": skel, "nt_known": [nt], "hemi_lineage_id": hl})
                for _ in range(syns_per_skel):
                    syns.append({"synapse_id": len(syns), "x": 4 * len(syns), "y": 8, "z": 40, "skeleton_id": skel})
    return syns, skels, hls


@pytest.fixture
def sqlite_store(tmp_path):
    with open_store(f"sqlite:///{tmp_path / 't.sqlite'}") as s:
        yield s


def test_a_split_with_an_empty_part_is_refused_naming_part_and_groups(sqlite_store):
    syns, skels, hls = _records(hls_per_class=2)
    import_collections(sqlite_store, "db", synapses=syns, skeletons=skels, hemilineages=hls)
    # two hemilineages per class: one goes to train, one to validation, none is left for test
    with pytest.raises(SplitError, match=r"split 'hl' \(hemilineage\): part 'test' got 0 synapses, 7 of 72 requested "
                                         r"\(fraction 0.1\): the 6 hemilineages .* of 3 classes are too few"):
        create_split(sqlite_store, "db", "hl", kind="hemilineage", synapse_types=TYPES)
    with pytest.raises(SplitError, match="no split named 'hl'"):
        read_split(sqlite_store, "db", "hl")  # nothing stored
    # a part nobody asked for may be empty
    info = create_split(sqlite_store, "db", "hl", kind="hemilineage", fractions=(0.5, 0.0, 0.5), synapse_types=TYPES)
    assert sum(info.counts["validation"].values()) == 0 and sum(info.counts["test"].values()) == 36


def test_a_split_far_off_its_fractions_warns_with_requested_and_obtained_counts(sqlite_store, caplog):
    syns, skels, hls = _records(hls_per_class=3)
    import_collections(sqlite_store, "db", synapses=syns, skeletons=skels, hemilineages=hls)
    with caplog.at_level(logging.WARNING, logger="synful.transmitters.splits"):
        info = create_split(sqlite_store, "db", "hl", kind="hemilineage", synapse_types=TYPES)
    # three hemilineages per class: a third of the synapses each, where 80 / 10 / 10 % were asked for
    assert {p: sum(c.values()) for p, c in info.counts.items()} == {"train": 36, "validation": 36, "test": 36}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("part 'validation' got 36 synapses (3 of 9 hemilineages" in w and "11 requested (fraction 0.1 of 108)"
               in w for w in warnings), warnings
    assert any("part 'train' got 36 synapses" in w and "86 requested" in w for w in warnings), warnings
    # a split near its fractions is quiet
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="synful.transmitters.splits"):
        create_split(sqlite_store, "db", "rnd", kind="random", synapse_types=TYPES)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


# ---- 5. / 6. train.py without an iteration count, and the config it names ---------------------------------------

def test_train_py_names_the_transmitter_config():
    text = template_text("transmitter_train_config.ini")
    assert "iterations = " in text
    from synful.scaffold import TRANSMITTER_TRAIN_LAUNCHER

    assert "transmitter_train_config.ini" in TRANSMITTER_TRAIN_LAUNCHER
    assert not re.search(r"(?<!transmitter_)train_config\.ini", TRANSMITTER_TRAIN_LAUNCHER)
    import synful.transmitters.train as ttrain

    for doc in (ttrain.__doc__, ttrain.train.__doc__, ttrain.submit_training.__doc__):
        assert not re.search(r"(?<!transmitter_)train_config\.ini", doc)


@pytest.mark.slow
def test_train_py_without_a_number_trains_to_the_configs_iterations(tmp_path):
    from synful.transmitters.synthetic_export import write_synthetic_dataset

    base = tmp_path
    paths = write_synthetic_dataset(base / "nt" / "01_data", shape=(12, 400, 400), seed=0, synapse_types=TYPES[:2],
                                    synapse_density=30)
    url = f"sqlite:///{base / 'nt' / '01_data' / 'transmitters.sqlite'}"
    with open_store(url) as s:
        import_collections(s, "synister", synapses=paths["synapses"], skeletons=paths["skeletons"],
                           hemilineages=paths["hemilineages"])
        create_split(s, "synister", "skeleton", kind="random", fractions=(1.0, 0.0, 0.0), synapse_types=TYPES[:2])
    setup = _transmitter_setup(base, synapse_types=list(TYPES[:2]), input_shape=(4, 32, 32), fmaps=2,
                               fmap_inc=[2], n_convolutions=[1], downsample_factors=[(1, 2, 2)], fc_size=4,
                               batch_size=2, num_workers=0, elastic_augment=False, iterations=2)
    assert read_transmitter_train_config(setup / "transmitter_train_config.ini").iterations == 2
    r = subprocess.run([sys.executable, "train.py"], cwd=setup, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "trained to iteration 2" in r.stdout
    assert [p.name for p in (setup / "checkpoints").glob("model_*.keras")] == ["model_2.keras"]


def test_cli_train_without_iterations_means_the_configs():
    from synful.cli import build_parser

    args = build_parser().parse_args(["transmitter", "train", "setup"])
    assert args.iterations is None


# ---- 7. integers beyond int64 ------------------------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "mongodb"])
def any_store(request, tmp_path):
    url = f"sqlite:///{tmp_path / 't.sqlite'}" if request.param == "sqlite" else request.getfixturevalue("mongodb_url")
    db = f"overflow_{tmp_path.name[-12:]}".replace("-", "_")
    with open_store(url) as s:
        for name in (SYNAPSES, SKELETONS, HEMILINEAGES):
            s.collection(db, name).drop()
        yield s, db, url


@pytest.mark.parametrize("export, index, field, value", [
    ("synapses", 2, "synapse_id", 2 ** 63),
    ("synapses", 1, "x", 1e30),
    ("synapses", 2, "z", -2 ** 63 - 1),
    ("synapses", 0, "skeleton_id", 2 ** 64),
    ("skeletons", 1, "hemi_lineage_id", 10 ** 30),
])
def test_values_beyond_int64_are_refused_before_anything_is_written(any_store, tmp_path, capsys, export, index, field,
                                                                     value):
    s, db, url = any_store
    syns, skels, hls = _records(hls_per_class=1, skels_per_hl=1, syns_per_skel=2)
    import_collections(s, db, synapses=syns, skeletons=skels, hemilineages=hls)
    bad = {"synapses": [dict(r) for r in syns], "skeletons": [dict(r) for r in skels]}
    bad[export][index][field] = value
    files = {}
    for name, recs in (("synapses", bad["synapses"]), ("skeletons", bad["skeletons"]), ("hemilineages", hls)):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(recs))
    with pytest.raises(DataImportError, match=rf"^{re.escape(str(files[export]))} record {index} .*field '{field}': "
                                              r".* outside the int64 range"):
        import_collections(s, db, overwrite=True, **files)
    # all or nothing: the earlier import is untouched
    assert s.collection(db, SYNAPSES).find() == syns and s.collection(db, SKELETONS).count() == len(skels)
    # the command line says the same in one line
    assert cli_main(["transmitter", "import", url, "--database", db,
                     "--overwrite", *(a for n, p in files.items() for a in (f"--{n}", str(p)))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"record {index}" in err and f"field '{field}'" in err, err
    assert s.collection(db, SYNAPSES).find() == syns


def test_prepare_training_set_writes_keys_and_refuses_bad_ones(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, str(ROOT / "prepare_training.py"), "-e", "nt", "-d", str(tmp_path),
                               "--kind", "transmitter", *args], capture_output=True, text=True, cwd=ROOT)

    r = run("-t", "0", "--set", "fc_size=256", "input_shape=8, 96, 96")
    assert r.returncode == 0, r.stderr
    cfg = read_transmitter_train_config(tmp_path / "nt" / "02_train" / "setup_t0" / "transmitter_train_config.ini")
    assert cfg.fc_size == 256 and cfg.input_shape == (8, 96, 96)
    r = run("-t", "1", "--set", "fc_size=-1")
    assert r.returncode == 1 and "[TransmitterTraining] fc_size: must be >= 1" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "nt" / "02_train" / "setup_t1").exists()
    r = run("-t", "1", "--set", "fc_size")
    assert r.returncode == 1 and "--set 'fc_size': expected KEY=VALUE" in r.stderr
