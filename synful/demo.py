"""The whole workflow on synthetic data, in one call: ``synful demo``.

Steps (each reuses what an earlier run finished, so a second run is cheap and
prints the same numbers):

1. synthetic volumes in ``<base>/demo/01_data`` (training volumes only with
   ``train=True``; one held-out test volume, seed :data:`TEST_SEED`) and a
   dataset manifest listing them;
2. ``02_train/setup_t0`` scaffolded like ``prepare_training.py`` with the demo
   network (:data:`DEMO_TRAINING`); the shipped model
   (``synful/demo_model``) is installed as its checkpoint, or, with
   ``train=True``, the network is trained from scratch (fixed seed);
3. ``03_predict/setup_t0_p0`` scaffolded like ``prepare_prediction.py``;
4. blockwise prediction with 2 local workers, extraction into the SQLite
   store of the run, evaluation against the ground truth;
5. a precision-recall curve PNG (from evaluation) and a slice PNG with the
   predicted and the ground-truth partners drawn.

The demo data uses a voxel size of 40 x 8 x 8 nm (z, y, x): the synthetic
structures are sized in nm, so this halves the in-plane voxel count of the
CREMI-like 40 x 4 x 4 nm without changing what the network has to learn, and
keeps the demo within minutes on two CPU cores.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from .errors import SynfulError

__all__ = ["DEMO_TRAINING", "DEMO_VOXEL_SIZE", "MODEL_DIR", "run_demo", "save_model"]

logger = logging.getLogger(__name__)

EXPERIMENT = "demo"
DEMO_VOXEL_SIZE = (40, 8, 8)
TRAIN_SEEDS = (0, 1, 2, 3)
TEST_SEED = 1000
TRAIN_SHAPE = (40, 400, 400)   # voxels, (z, y, x)
TEST_SHAPE = (40, 400, 400)
QUICK_TEST_SHAPE = (20, 260, 260)
MODEL_DIR = Path(__file__).resolve().parent / "demo_model"

# [Training] values of the demo network (the rest are the template defaults).
DEMO_TRAINING = {
    "voxel_size": DEMO_VOXEL_SIZE,
    "input_shape": (20, 148, 148),
    "fmap_num": 8,
    "fmap_inc_factor": 2,
    "downsample_factors": [(1, 2, 2), (1, 2, 2), (1, 2, 2)],
    "kernel_size": (1, 3, 3),
    # in-plane kernels at the two fine levels, 3D at the two coarse ones: +-6 sections of z context
    # (a pre site is up to ~7 sections from its post site) at a fraction of the cost of 3D everywhere
    "level_kernel_sizes": [(1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3)],
    "vector_scale": 100.0,
    # post sites of one polyadic synapse are often ~100-140 nm apart in touching neurons: larger blobs
    # merge into one component (perfect predictions with 100 nm blobs find 70% of the partners)
    "blob_radius": 40.0,
    "d_blob_radius": 100.0,
    "d_loss_scale": 0.00002,
    "learning_rate": 1e-3,
    "reject_probability": 0.9,
    "checkpoint_every": 1000,
    "keep_checkpoints": 2,
    "snapshot_every": 0,
    "image_every": 0,
    "log_every": 50,
    "cache_size": 8,
    "num_workers": 2,
    "seed": 42,
}
DEMO_ITERATIONS = 20000

DEMO_PREDICTION = {
    "input_shape": (20, 244, 244),
    "block_factor": (1, 1, 1),
}
DEMO_EXTRACTION = {
    # the class-balanced loss makes the network confident beyond the small blobs: a high threshold, and
    # components split where the neuron changes, keep the post sites of one polyadic synapse apart
    # (both chosen on a validation volume, seed 500, not on the test volume)
    "cc_threshold": 0.8,
    "split_by_segment": True,
    "score_type": "sum",
    "loc_type": "edt",
    "score_thr": 0.0,
    "min_distance": 40.0,
    "max_distance": 800.0,
    "context": (400, 400, 400),
    "block_shape": (1600, 1600, 1600),
    "remove_same_segment": True,
}
DEMO_EVALUATION = {
    "score_thresholds": [0.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0],
    "matching": "segment",
    "matching_threshold": 400.0,
    "filter_same_id": True,
    "filter_redundant": True,
    "filter_redundant_dist_thr": 200.0,
    "filter_seg_ids": [0],
}


def _data(base: Path, *, train: bool, quick: bool) -> Path:
    from .io.manifest import Sample, write_manifest
    from .synthetic import write_synthetic

    data = base / EXPERIMENT / "01_data"
    data.mkdir(parents=True, exist_ok=True)
    samples = []
    if train:
        for seed in TRAIN_SEEDS:
            path = write_synthetic(data / f"train_{seed}.zarr", TRAIN_SHAPE, seed=seed, voxel_size=DEMO_VOXEL_SIZE)
            samples.append(Sample(name=f"train_{seed}", container=str(path), annotations=str(path), split="train"))
    shape = QUICK_TEST_SHAPE if quick else TEST_SHAPE
    name = "test_quick" if quick else "test"
    path = write_synthetic(data / f"{name}.zarr", shape, seed=TEST_SEED, voxel_size=DEMO_VOXEL_SIZE)
    samples.append(Sample(name=name, container=str(path), annotations=str(path), split="test"))
    manifest = data / ("manifest_quick.yaml" if quick else "manifest.yaml")
    write_manifest(samples, manifest)
    return path


def _checkpoint_files(model_dir: Path) -> tuple[int, Path]:
    weights = sorted(model_dir.glob("model_*.weights.h5"))
    if not weights:
        raise SynfulError(f"{model_dir}: no shipped demo model (model_<iteration>.weights.h5); "
                          f"run `synful demo --train` to train one")
    w = weights[-1]
    return int(w.name[len("model_"):-len(".weights.h5")]), w


def _train_setup(base: Path, *, train: bool, quick: bool, iterations: int) -> tuple[Path, int]:
    from .config import read_train_config
    from .scaffold import create_train_setup, train_setup_dir
    from .train import checkpoint_path, latest_checkpoint

    setup = train_setup_dir(base, EXPERIMENT, 0)
    manifest = "../../01_data/manifest_quick.yaml" if quick else "../../01_data/manifest.yaml"
    if not setup.exists():
        values = dict(DEMO_TRAINING, manifest=manifest, iterations=iterations)
        create_train_setup(base, EXPERIMENT, 0, overrides={"train_config.ini": {"Training": values}})
    if train:
        from .train import train as train_network

        train_network(setup, iterations)
        it, _ = latest_checkpoint(setup)
        return setup, it
    it, weights = _checkpoint_files(MODEL_DIR)
    shipped = read_train_config(MODEL_DIR / "train_config.ini")
    ours = read_train_config(setup / "train_config.ini")
    for k in ("input_shape", "fmap_num", "fmap_inc_factor", "downsample_factors", "kernel_size", "level_kernel_sizes",
              "num_convs",
              "unet_model", "tasks", "upsampling", "vector_scale", "voxel_size"):
        if getattr(shipped, k) != getattr(ours, k):
            raise SynfulError(f"{setup / 'train_config.ini'} [Training] {k}: differs from the shipped demo model "
                              f"({getattr(ours, k)} vs {getattr(shipped, k)}); remove {base / EXPERIMENT} and rerun")
    target = checkpoint_path(setup, it)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        shutil.copyfile(weights, tmp)
        tmp.rename(target)
    return setup, it


def _predict_setup(base: Path, iteration: int, test_container: Path, workers: int) -> Path:
    from .scaffold import create_predict_setups, predict_setup_dir

    run = predict_setup_dir(base, EXPERIMENT, 0, 0)
    if not run.exists():
        create_predict_setups(base, EXPERIMENT, 0, [iteration], overrides={
            "predict_config.ini": {
                "Prediction": dict(DEMO_PREDICTION, raw_container=str(test_container)),
                "Extraction": dict(DEMO_EXTRACTION, seg_container=str(test_container)),
                "Evaluation": dict(DEMO_EVALUATION),
            },
            "worker_config.ini": {"Worker": {"executor": "local", "num_block_workers": workers, "num_cpus": 1}},
        })
    return run


def _slice_png(run: Path, test_container: Path, best: dict) -> Path:
    import numpy as np

    from .store import open_run_store
    from .synthetic import show

    with open_run_store(run) as store:
        pred = store.query()
    pred = pred[pred["score"] >= best["score_thr"]]
    out = run / "evaluation" / "demo_slices.png"
    show(test_container, out, partners=None, predicted=np.asarray(pred))
    return out


def run_demo(base_dir=None, *, train: bool = False, iterations: int | None = None, quick: bool = False,
             workers: int = 2) -> dict:
    """Run the demo under ``base_dir`` (default: ``./experiments``); return the best result.

    ``quick`` predicts a smaller held-out volume (CI); ``train`` trains the
    network from scratch instead of using the shipped model.  Returns the
    evaluation result with the best f-score, plus the paths of the PNGs.
    """
    from .evaluate import evaluate_run
    from .extract import extract
    from .predict import predict

    base = Path(base_dir) if base_dir is not None else Path.cwd() / "experiments"
    base = base.resolve()
    iterations = iterations or DEMO_ITERATIONS
    test_container = _data(base, train=train, quick=quick)
    setup, it = _train_setup(base, train=train, quick=quick, iterations=iterations)
    run = _predict_setup(base, it, test_container, workers)
    predict(run, progress=True)
    extract(run, progress=True)
    results, out_dir = evaluate_run(run)
    best = max(results, key=lambda r: (r["fscore"], -r["score_thr"]))
    best = dict(best)
    best["pr_curve_png"] = str(out_dir / "precision_recall.png")
    best["slices_png"] = str(_slice_png(run, test_container, best))
    best["run_dir"] = str(run)
    return best


def save_model(setup_dir, iteration: int | None = None, out_dir=None) -> Path:
    """Copy a trained demo checkpoint and its train_config.ini into ``out_dir`` (default: the shipped model)."""
    from .train import checkpoint_path, latest_checkpoint

    setup_dir = Path(setup_dir)
    out_dir = Path(out_dir) if out_dir is not None else MODEL_DIR
    if iteration is None:
        latest = latest_checkpoint(setup_dir)
        if latest is None:
            raise SynfulError(f"{setup_dir}: no checkpoint to save")
        iteration = latest[0]
    src = checkpoint_path(setup_dir, iteration)
    if not src.is_file():
        raise SynfulError(f"{src}: checkpoint not found")
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("model_*.weights.h5"):
        old.unlink()
    shutil.copyfile(src, out_dir / src.name)
    shutil.copyfile(setup_dir / "train_config.ini", out_dir / "train_config.ini")
    return out_dir / src.name
