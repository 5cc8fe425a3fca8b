"""The whole workflow on synthetic data, in one call: ``synful demo``.

Steps (each reuses what an earlier run finished, so a second run is cheap and
prints the same numbers):

1. synthetic volumes in ``<base>/demo/01_data`` (training volumes only with
   ``train=True``; a validation volume, seed :data:`VALIDATION_SEED`, and a
   held-out test volume, seed :data:`TEST_SEED`) and a dataset manifest
   listing them;
2. ``02_train/setup_t0`` scaffolded like ``prepare_training.py`` with the demo
   network (:data:`DEMO_TRAINING`); the shipped model
   (``synful/demo_model``) is installed as its checkpoint, or, with
   ``train=True``, the network is trained from scratch (fixed seed);
3. what a lab without ground truth has: per volume, a container
   ``<name>_raw.zarr`` holding only the raw, and in it a watershed
   segmentation of the raw's membrane contrast (:mod:`synful.segment`);
   the ground-truth labels are never an input from here until evaluation;
4. ``03_predict/setup_t0_p0`` (validation) and ``setup_t0_p1`` (test),
   scaffolded like ``prepare_prediction.py``: blockwise prediction of the raw
   with 2 local workers, extraction into the run's SQLite store with the
   watershed as ``seg_container`` (segment ids, ``split_by_segment``, the
   same-segment filter);
5. calibrate on validation, report on test: the validation run is evaluated
   over the score-threshold sweep (:data:`DEMO_EVALUATION`), the threshold
   with the best validation f-score is chosen there
   (:func:`synful.evaluate.read_calibration`) and the test run is evaluated at
   exactly that threshold, once with ``matching = segment`` (the predicted
   sites' neurons looked up in the ground-truth labels by the evaluation,
   ``matching_seg_container``) and once with ``matching = location``;
6. a precision-recall curve PNG (the validation sweep) and a slice PNG with
   the test volume's predicted (at the chosen threshold) and ground-truth
   partners drawn.

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
from .io.files import atomic_write, numbered_files

__all__ = ["DEMO_TRAINING", "DEMO_VOXEL_SIZE", "MODEL_DIR", "VALIDATION_SEED", "TEST_SEED", "run_demo", "save_model"]

logger = logging.getLogger(__name__)

EXPERIMENT = "demo"
DEMO_VOXEL_SIZE = (40, 8, 8)
TRAIN_SEEDS = (0, 1, 2, 3)
VALIDATION_SEED = 500
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
    "vector_scale": 100.0,  # as the template's default
    # post sites of one polyadic synapse are often ~100-140 nm apart in touching neurons: larger blobs
    # merge into one component (perfect predictions with 100 nm blobs find 70% of the partners)
    "blob_radius": 40.0,
    "d_blob_radius": 100.0,
    # a fifth of the template's 1e-4 (the vector term starts near 0.1, the indicator's near 0.7); the shipped
    # model was trained with it
    "d_loss_scale": 0.00002,
    "learning_rate": 1e-3,
    "reject_probability": 0.9,
    "checkpoint_every": 1000,
    "keep_checkpoints": 2,
    "snapshot_every": 0,
    "image_every": 0,
    "log_every": 50,
    "cache_size": 8,
    "seed": 42,
}
#: [Worker] num_cache_workers of the demo's training setup (PreCache processes)
DEMO_CACHE_WORKERS = 2
DEMO_ITERATIONS = 20000

DEMO_PREDICTION = {
    "input_shape": (20, 244, 244),
    "block_factor": (1, 1, 1),
}
DEMO_EXTRACTION = {
    # chosen on the validation volume (seed 500, full size) by its best segment-matching f-score over the score
    # sweep, with the watershed as segmentation (measured 2026-11-26). First round (watershed defaults, pre site from
    # the vector at the post site): cc_threshold 0.3 / 0.4 / 0.5 / 0.6 / 0.7 / 0.8 / 0.9 gave 0.850 / 0.839 /
    # 0.856 / 0.819 / 0.822 / 0.832 / 0.804; without split_by_segment (components split where the watershed
    # segment changes, keeping the post sites of one polyadic synapse apart) 0.5 gave 0.736; remove_same_segment
    # and max_distance 600 changed nothing. Then the watershed (DEMO_WATERSHED): 0.879 at cc_threshold 0.5.
    # Last round: vector_type mean (the partner vector averaged over the component) 0.889, loc_type max 0.870,
    # min_distance 80 0.883; with vector_type mean, cc_threshold 0.4 / 0.5 / 0.55 / 0.6 / 0.7 / 0.8 gave
    # 0.840 / 0.889 / 0.874 / 0.897 / 0.885 / 0.875. Neighbouring settings differ by about one partner (~0.01):
    # the choice is near the validation volume's noise.
    "cc_threshold": 0.6,
    "vector_type": "mean",
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
# the watershed of the raw that replaces the ground-truth labels after training (synful.segment); chosen on the
# validation volume after cc_threshold (best segment-matching f-score over the score sweep, cc_threshold 0.5):
# seed_distance_nm 20 / 30 / 40 / 60 gave 0.867 / 0.871 / 0.867 / 0.804, membrane_threshold 130 / 140 / 150 with
# seed_distance_nm 30 gave 0.879 / 0.871 / 0.857, link_overlap 0.3 / 0.5 / 0.7 gave 0.834 / 0.867 / 0.826
DEMO_WATERSHED = {"sigma_nm": 4.0, "membrane_threshold": 130.0, "seed_distance_nm": 30.0, "min_seed_voxels": 20,
                  "link_overlap": 0.5}
DEMO_EVALUATION = {
    # the sweep over which the validation run chooses the threshold the test run is reported at
    "score_thresholds": [0.0, 5.0, 10.0, 20.0, 40.0, 60.0, 80.0, 120.0, 160.0, 240.0, 320.0],
    "matching": "segment",
    "matching_threshold": 400.0,
    "filter_same_id": True,
    "filter_redundant": True,
    "filter_redundant_dist_thr": 200.0,
    "filter_seg_ids": [0],
}


def _data(base: Path, *, train: bool, quick: bool) -> dict[str, Path]:
    """Write the volumes and the manifest; return {"validation": container, "test": container} (with ground truth)."""
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
    suffix = "_quick" if quick else ""
    out = {}
    for part, seed in (("validation", VALIDATION_SEED), ("test", TEST_SEED)):
        name = f"{part}{suffix}"
        path = write_synthetic(data / f"{name}.zarr", shape, seed=seed, voxel_size=DEMO_VOXEL_SIZE)
        samples.append(Sample(name=name, container=str(path), annotations=str(path), split=part))
        out[part] = path
    manifest = data / ("manifest_quick.yaml" if quick else "manifest.yaml")
    write_manifest(samples, manifest)
    return out


def _without_ground_truth(container: Path) -> Path:
    """``<name>_raw.zarr`` beside ``container``: its raw only, plus the watershed of that raw (:mod:`synful.segment`).

    This is all prediction and extraction get to see: no ground-truth label
    array is an input after training.
    """
    import zarr

    from .io.cremi import RAW
    from .io.volumes import open_volume, write_volume
    from .segment import watershed_segmentation

    out = container.with_name(container.stem + "_raw.zarr")
    if not (out / RAW).exists():
        raw = open_volume(container, RAW)

        def write(tmp):
            zarr.open_group(str(tmp), mode="w")
            write_volume(tmp, RAW, raw.to_ndarray(raw.roi), raw.voxel_size, raw.roi.offset,
                         chunk_shape=tuple(zarr.open_array(str(container / RAW), mode="r").chunks))

        atomic_write(out, write)
    watershed_segmentation(out, out, raw_dataset=RAW, **DEMO_WATERSHED)
    return out


def _checkpoint_files(model_dir: Path) -> tuple[int, Path]:
    from .train import CHECKPOINT_PATTERN

    weights = numbered_files(model_dir, CHECKPOINT_PATTERN)
    if not weights:
        raise SynfulError(f"{model_dir}: no shipped demo model (model_<iteration>.weights.h5); "
                          f"run `synful demo --train` to train one")
    return weights[-1]


def _train_setup(base: Path, *, train: bool, quick: bool, iterations: int) -> tuple[Path, int]:
    from .config import read_train_config
    from .scaffold import create_train_setup, train_setup_dir
    from .train import checkpoint_path, latest_checkpoint

    setup = train_setup_dir(base, EXPERIMENT, 0)
    manifest = "../../01_data/manifest_quick.yaml" if quick else "../../01_data/manifest.yaml"
    if not setup.exists():
        values = dict(DEMO_TRAINING, manifest=manifest, iterations=iterations)
        create_train_setup(base, EXPERIMENT, 0, overrides={"train_config.ini": {"Training": values},
                                                           "worker_config.ini": {"Worker": {"num_cache_workers":
                                                                                            DEMO_CACHE_WORKERS}}})
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
        atomic_write(target, lambda tmp: shutil.copyfile(weights, tmp))
    return setup, it


def _predict_setup(base: Path, iteration: int, raw_container: Path, workers: int, *, predict_id: int = 0,
                   validation: bool = False, gt_container: Path | None = None) -> Path:
    """``03_predict/setup_t0_p<predict_id>`` predicting ``raw_container`` (benchmarks/bench_extract.py uses it too).

    Extraction looks segment ids up in the watershed inside ``raw_container``;
    evaluation reads the ground truth of ``gt_container`` (default:
    ``raw_container``).
    """
    from .scaffold import create_predict_setups, predict_setup_dir
    from .segment import SEGMENTATION_DATASET

    gt_container = raw_container if gt_container is None else gt_container
    run = predict_setup_dir(base, EXPERIMENT, 0, predict_id)
    if not run.exists():
        (made,) = create_predict_setups(base, EXPERIMENT, 0, [iteration], validation=validation, overrides={
            "predict_config.ini": {
                "Prediction": dict(DEMO_PREDICTION, raw_container=str(raw_container)),
                "Extraction": dict(DEMO_EXTRACTION, seg_container=str(raw_container),
                                   seg_dataset=SEGMENTATION_DATASET),
                # evaluation, and only evaluation, reads the ground truth
                "Evaluation": dict(DEMO_EVALUATION, gt_synlinks=str(gt_container),
                                   matching_seg_container=str(gt_container)),
            },
            "worker_config.ini": {"Worker": {"executor": "local", "num_block_workers": workers, "num_cpus": 1}},
        })
        if made.resolve() != run.resolve():
            raise SynfulError(f"{made}: created instead of {run}; remove {base / EXPERIMENT / '03_predict'} and rerun")
    return run


def _slice_png(run: Path, test_container: Path, score_thr: float) -> Path:
    """``demo_slices.png``: the test run's predictions at the calibrated threshold over the ground truth."""
    from .synthetic import show

    out = run / "evaluation" / "demo_slices.png"
    show(test_container, out, predicted=run, min_score=score_thr,
         title=f"{test_container.name} (test), calibrated threshold")
    return out


def _calibrated(val_run: Path, test_run: Path, mode: str) -> dict:
    """Sweep ``val_run`` with ``matching = mode``, choose there, evaluate ``test_run`` at that choice only."""
    from .evaluate import evaluate_run

    overrides = None if mode == "segment" else {"matching": "location", "matching_seg_container": None}
    sub = "evaluation" if mode == "segment" else f"evaluation_{mode}"
    evaluate_run(val_run, val_run / sub, overrides=overrides)
    results, out_dir = evaluate_run(test_run, test_run / sub, calibration=val_run / sub / "summary.json",
                                    overrides=overrides)
    (r,) = results
    return {**r, "results_dir": str(out_dir), "validation_pr_curve_png": str(val_run / sub / "precision_recall.png")}


def run_demo(base_dir=None, *, train: bool = False, iterations: int | None = None, quick: bool = False,
             workers: int = 2) -> dict:
    """Run the demo under ``base_dir`` (default: ``./experiments``); return the test scores at the validation choice.

    ``quick`` predicts smaller validation and test volumes (CI); ``train``
    trains the network from scratch instead of using the shipped model.
    Returns the test run's result with ``matching = segment`` at the score
    threshold chosen on the validation run (``calibration`` says which and
    from where), with ``location``: the same for ``matching = location``, and
    the paths of the PNGs and runs.
    """
    from .extract import extract
    from .predict import predict

    base = Path(base_dir) if base_dir is not None else Path.cwd() / "experiments"
    base = base.resolve()
    iterations = iterations or DEMO_ITERATIONS
    containers = _data(base, train=train, quick=quick)
    setup, it = _train_setup(base, train=train, quick=quick, iterations=iterations)
    runs = {}
    for predict_id, part in enumerate(("validation", "test")):
        raw = _without_ground_truth(containers[part])
        runs[part] = run = _predict_setup(base, it, raw, workers, predict_id=predict_id,
                                          validation=part == "validation", gt_container=containers[part])
        predict(run, progress=True)
        extract(run, progress=True)
    best = _calibrated(runs["validation"], runs["test"], "segment")
    best["location"] = _calibrated(runs["validation"], runs["test"], "location")
    best["pr_curve_png"] = best["validation_pr_curve_png"]
    best["slices_png"] = str(_slice_png(runs["test"], containers["test"], best["score_thr"]))
    best["run_dir"] = str(runs["test"])
    best["validation_run_dir"] = str(runs["validation"])
    return best


def save_model(setup_dir, iteration: int | None = None, out_dir=None) -> Path:
    """Copy a trained demo checkpoint and its train_config.ini into ``out_dir`` (default: the shipped model)."""
    from .train import CHECKPOINT_PATTERN, checkpoint_path, latest_checkpoint

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
    for _, old in numbered_files(out_dir, CHECKPOINT_PATTERN):
        old.unlink()
    shutil.copyfile(src, out_dir / src.name)
    shutil.copyfile(setup_dir / "train_config.ini", out_dir / "train_config.ini")
    return out_dir / src.name
