"""``synful <stage> ...``: one subcommand per stage.

The CLI only parses arguments and calls each stage's public API; a
:class:`~synful.errors.SynfulError` becomes one ``error: ...`` line on stderr
and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import suppress

from . import __version__
from .errors import SynfulError


def _add_validate(sub):
    p = sub.add_parser("validate", help="run the pre-flight checks of train / predict / extract on setup "
                                        "directories (or read single ini files); one line per problem")
    p.add_argument("paths", nargs="+", help="setup directories or ini files")
    p.set_defaults(func=_run_validate)


def _run_validate(args) -> int:
    """Each setup directory gets the checks its stages run before starting (:func:`synful.preflight.check_setup`);
    a single ini file is only read.  Every problem is one ``error: ...`` line on stderr, and the exit
    code is 2 when there was one (as for any other error); ``ok FILE`` lines for setups without problems."""
    import logging
    from pathlib import Path

    from .config import read_predict_config, read_train_config, read_worker_config

    readers = {"train_config.ini": read_train_config, "predict_config.ini": read_predict_config,
               "worker_config.ini": read_worker_config}
    # one line per problem: no start-up notices of the libraries the data checks import
    noisy = logging.getLogger("numexpr")
    saved_level = noisy.level
    noisy.setLevel(logging.WARNING)
    try:
        return _validate_paths(map(Path, args.paths), readers)
    finally:
        noisy.setLevel(saved_level)


def _validate_paths(paths, readers) -> int:
    from .preflight import Problems, check_setup

    failed = False
    for path in paths:
        if path.is_dir():
            checked, problems = check_setup(path)
        elif path.name in readers:
            found = Problems()
            found.run(readers[path.name], path)
            checked, problems = [path], found.messages
        else:
            checked, problems = [], [f"{path}: not a setup directory or a train/predict/worker config"]
        for message in problems:
            print(f"error: {message}", file=sys.stderr)
        if not problems:
            for c in checked:
                print(f"ok {c}")
        failed = failed or bool(problems)
    return 2 if failed else 0


def _add_train(sub):
    p = sub.add_parser("train", help="train the network of a training setup (resumes from its latest checkpoint)")
    p.add_argument("setup_dir", metavar="SETUP_DIR", help="training setup directory (holds train_config.ini)")
    p.add_argument("--iterations", type=int, default=None, metavar="N",
                   help="train until iteration N (default: [Training] iterations)")
    p.add_argument("--submit", action="store_true", help="submit as one Slurm job with worker_config.ini's "
                                                         "resources (job id and logs: synful status SETUP_DIR)")
    p.add_argument("--wait", action="store_true", help="with --submit: wait for the job and return its exit code")
    p.set_defaults(func=_run_train)
    return p


def _run_train(args) -> int:
    if args.submit:
        from .cluster import submit_training

        job = submit_training(args.setup_dir, args.iterations)
        print(f"submitted training job {job.job_id}; log {job.stdout}; follow with: synful status {args.setup_dir}")
        return job.wait() if args.wait else 0
    from .train import train

    last = train(args.setup_dir, iterations=args.iterations)
    print(f"trained until iteration {last}")
    return 0


def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="synaptic-partner f-score over a score-threshold sweep (CREMI / FAFB protocol)")
    p.add_argument("target", help="evaluation JSON config, or a prediction setup directory (its [Evaluation])")
    p.add_argument("--out", help="results directory (default: <config stem>_evaluation beside the JSON, "
                                 "or <setup>/evaluation)")
    p.add_argument("--calibration", metavar="VALIDATION", default=None,
                   help="calibrate on validation, report on test: a validation prediction run (or its evaluation "
                        "folder or summary.json); the score threshold with its best f-score (the lowest on a tie) is "
                        "applied unchanged, and the results record it, the file and its SHA-256")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args) -> int:
    from pathlib import Path

    from .evaluate import evaluate_config, evaluate_run

    target = Path(args.target)
    if target.is_dir():
        results, out_dir = evaluate_run(target, args.out, calibration=args.calibration)
    else:
        results, out_dir = evaluate_config(target, args.out, calibration=args.calibration)
    if args.calibration is not None:
        c, r = results[0]["calibration"], results[0]
        print(f"score_thr {c['score_thr']:g} chosen on validation ({c['source']}, fscore {c['validation_fscore']:.4f} "
              f"there; sha256 {c['sha256'][:12]})")
        print(f"at it: fscore {r['fscore']:.4f} precision {r['precision']:.4f} recall {r['recall']:.4f} "
              f"(tp {r['tpcount']}, fp {r['fpcount']}, fn {r['fncount']}; matching = {r['matching']}); "
              f"results in {out_dir}" + (f"\nnote: {r['note']}" if r.get("note") else ""))
        return 0
    for r in results:
        print(f"score_thr {r['score_thr']:g}: fscore {r['fscore']:.4f} precision {r['precision']:.4f} "
              f"recall {r['recall']:.4f} (tp {r['tpcount']}, fp {r['fpcount']}, fn {r['fncount']})"
              + (f"; {r['note']}" if r.get("note") else ""))
    best = max(results, key=lambda r: r["fscore"])
    print(f"best fscore {best['fscore']:.4f} at score_thr {best['score_thr']:g} (matching = {best['matching']}); "
          f"results in {out_dir}")
    return 0


def _add_predict(sub):
    p = sub.add_parser("predict", help="blockwise network prediction over the ROI of a prediction setup (resumable)")
    p.add_argument("predict_dir", metavar="PREDICT_DIR", help="prediction setup directory (predict_config.ini, "
                                                               "worker_config.ini)")
    p.add_argument("--overwrite", action="store_true", help="delete the outputs and done markers and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--submit", action="store_true", help="run the workers as Slurm jobs (executor = slurm); "
                                                         "the scheduler stays in this process")
    p.add_argument("--plan", action="store_true", help="print blocks, voxels, output bytes, worker jobs and the "
                   "device-hours estimated from a benchmark's measured rate; run nothing")
    p.add_argument("--rate", type=float, metavar="VOXELS_PER_S", help="with --plan: voxels/s per worker instead of "
                   "the benchmark's")
    p.add_argument("--benchmark", metavar="JSON", help="with --plan: bench_predict.json with the rate (default: "
                   "benchmarks/results/bench_predict.json of this checkout)")
    p.set_defaults(func=_run_predict)
    _add_block_worker(sub, "predict-worker", "predict")


def _add_block_worker(sub, name: str, stage: str):
    """An internal ``<stage>-worker PREDICT_DIR`` command: what a local subprocess or a cluster job runs.

    The worker connects to the daisy scheduler named in ``$DAISY_CONTEXT`` and calls
    ``synful.<stage>.run_worker``.
    """
    def run(args) -> int:
        import importlib

        importlib.import_module(f"{__package__}.{stage}").run_worker(args.predict_dir)
        return 0

    w = sub.add_parser(name)
    w.add_argument("predict_dir", metavar="PREDICT_DIR")
    w.set_defaults(func=run)


def _run_predict(args) -> int:
    from .predict import predict

    if args.plan:
        from .predict.estimate import describe_plan, format_plan

        print(format_plan(describe_plan(args.predict_dir, rate=args.rate, benchmark=args.benchmark)))
        return 0
    if args.rate is not None or args.benchmark is not None:
        raise SynfulError("--rate and --benchmark go with --plan")
    meta = predict(args.predict_dir, overwrite=args.overwrite, progress=not args.no_progress,
                   executor="slurm" if args.submit else None)
    b = meta["blocks"]
    masked = f", {b['without_tissue']} without tissue" if b.get("without_tissue") else ""
    print(f"{b['total']} blocks: {b['processed']} predicted, {b['skipped']} already done{masked}, in "
          f"{meta['wall_seconds']:.1f} s, "
          f"{(meta['voxels_per_second'] or 0) / 1e6:.3f} Mvoxel/s; outputs in {meta['config']['out_container']}")
    return 0


def _add_extract(sub):
    p = sub.add_parser("extract", help="blockwise partner extraction from a prediction run into its result "
                                       "collection (resumable)")
    p.add_argument("predict_dir", metavar="PREDICT_DIR", help="prediction setup directory (predict_config.ini)")
    p.add_argument("--overwrite", action="store_true", help="drop the run's collection and done markers first")
    p.add_argument("--workers", type=int, help="local worker processes (default: worker_config.ini "
                                               "num_block_workers)")
    p.add_argument("--serial", action="store_true", help="run all blocks in this process (debugging)")
    p.add_argument("--submit", action="store_true", help="run the workers as Slurm jobs (executor = slurm); "
                                                         "the scheduler stays in this process")
    p.set_defaults(func=_run_extract)
    _add_block_worker(sub, "extract-worker", "extract")
    e = sub.add_parser("export", help="write a run's partners to FAFB benchmark JSON (.json), CSV (.csv), "
                                      "Parquet (.parquet) or Feather v2 (.feather)")
    e.add_argument("predict_dir", metavar="PREDICT_DIR", help="prediction setup directory")
    e.add_argument("out", metavar="OUT", help="output file, .json, .csv, .parquet or .feather (by suffix)")
    e.add_argument("--batch-rows", type=int, default=100_000, metavar="N",
                   help="partners read from the store and written per batch (Arrow record batch / Parquet row "
                        "group); the export streams, holding one batch at a time (default 100000)")
    e.set_defaults(func=_run_export)


def _run_extract(args) -> int:
    from .extract import extract

    s = extract(args.predict_dir, overwrite=args.overwrite, num_workers=args.workers,
                multiprocessing=not args.serial, executor="slurm" if args.submit else None)
    masked = s.get("blocks_without_tissue", 0)
    print(f"{s['partners']} partners in {s['store']} [{s['collection']}] ({s['blocks_total']} blocks: "
          f"{s['blocks_total'] - s['blocks_skipped'] - masked} extracted, {s['blocks_skipped']} already done"
          + (f", {masked} without tissue" if masked else "") + "); "
          f"score histogram {s['histogram']}")
    return 0


def _run_export(args) -> int:
    from .store import open_run_store

    with open_run_store(args.predict_dir) as store:
        n = store.count()
        path = store.export(args.out, batch_rows=args.batch_rows)
    print(f"wrote {n} partners to {path}")
    return 0


def _add_map_skeletons(sub):
    p = sub.add_parser("map-skeletons", help="give a run's partners pre/post skeleton ids from skeletons (SWC or "
                                             "synful_fafb JSON) and the segmentation (Synful's synapse mapping; "
                                             "blockwise, idempotent)")
    p.add_argument("predict_dir", metavar="PREDICT_DIR", help="prediction setup directory (its result collection)")
    p.add_argument("--skeletons", required=True, metavar="PATH",
                   help="directory of <skeleton_id>.swc / <skeleton_id>.json files, or one JSON node-list file "
                        "(synful_fafb gt_skeletons: neuron_id = skeleton id); nm")
    p.add_argument("--seg-container", help="segmentation container (default: [Extraction] seg_container)")
    p.add_argument("--seg-dataset", help="segmentation dataset (default: [Extraction] seg_dataset)")
    p.add_argument("--distance-upper-bound", type=float, metavar="NM",
                   help="no skeleton id when the nearest node in the segment is farther (default: no bound)")
    p.add_argument("--min-skeleton-nodes", type=int, default=1,
                   help="skeletons with fewer nodes in a segment are no candidates there (default 1)")
    p.add_argument("--block-shape", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   help="map blockwise in blocks of this size (nm) over the segmentation, each reading the "
                        "segmentation and skeleton nodes of its block plus --distance-upper-bound around it "
                        "(default: [Extraction] block_shape; one block without --distance-upper-bound)")
    p.add_argument("--workers", type=int, default=1,
                   help="daisy worker processes, each with its own store connection (default 1: the blocks run "
                        "one after the other in this process)")
    p.set_defaults(func=_run_map_skeletons)


def _run_map_skeletons(args) -> int:
    import functools
    from pathlib import Path

    from .config import read_predict_config
    from .io.volumes import open_volume
    from .mapping import MappingError, map_run
    from .store import open_run_store

    cfg = read_predict_config(Path(args.predict_dir) / "predict_config.ini").extraction
    container = args.seg_container or cfg.seg_container
    if not container:
        raise MappingError(f"{args.predict_dir}: no segmentation: pass --seg-container or set "
                           "[Extraction] seg_container")
    dataset = args.seg_dataset or cfg.seg_dataset
    seg = open_volume(container, dataset)
    with open_run_store(args.predict_dir) as store:
        s = map_run(store, args.skeletons, seg, distance_upper_bound=args.distance_upper_bound,
                    min_skeleton_nodes=args.min_skeleton_nodes, block_shape=args.block_shape or cfg.block_shape,
                    log_dir=Path(args.predict_dir) / "log" / "map_skeletons", num_workers=args.workers,
                    store_factory=functools.partial(open_run_store, str(Path(args.predict_dir).resolve())),
                    segmentation_spec=(str(container), dataset))
    updated = "" if s["changed"] is None else f"; {s['changed']} updated"
    print(f"{s['partners']} partners: {s['pre_mapped']} pre and {s['post_mapped']} post sites on a skeleton "
          f"({s['both_mapped']} both){updated} ({s['blocks']} blocks)")
    return 0


def _add_status(sub):
    p = sub.add_parser("status", help="a setup directory's jobs and log tail; its last checkpoint "
                                          "(training) or checkpoint and blocks done (prediction)")
    p.add_argument("setup_dir", help="training or prediction setup directory")
    p.add_argument("--tail", type=int, default=20, help="log lines to show (default 20)")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(func=_run_status)


def _run_status(args) -> int:
    import json

    from .cluster import format_status, status

    st = status(args.setup_dir, tail=args.tail)
    print(json.dumps(st, indent=2) if args.json else format_status(st))
    return 0


def _add_embed(sub):
    from .embed.cli import add_parser

    add_parser(sub)


def _add_transmitter(sub):
    from .transmitters.cli import add_parser

    add_parser(sub)


def _add_synthetic(sub):
    p = sub.add_parser("synthetic", help="generate a synthetic EM volume with ground-truth synaptic partners")
    p.add_argument("--out", required=True, help="output zarr container (CREMI layout)")
    p.add_argument("--shape", type=int, nargs=3, required=True, metavar=("Z", "Y", "X"), help="voxels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--voxel-size", type=int, nargs=3, default=(40, 4, 4), metavar=("Z", "Y", "X"), help="nm")
    p.add_argument("--offset", type=int, nargs=3, default=(0, 0, 0), metavar=("Z", "Y", "X"), help="nm")
    p.add_argument("--overwrite", action="store_true", help="replace an existing container with other parameters")
    p.add_argument("--show", metavar="PNG", help="also write a PNG of a few sections with the sites")
    p.add_argument("--manifest", metavar="YAML", help="also list the container as a sample in this dataset manifest "
                   "(created when missing), e.g. experiments/EXP/01_data/manifest.yaml")
    p.add_argument("--split", choices=("train", "validation", "test"), default="train",
                   help="the sample's split in --manifest (default: train)")
    p.set_defaults(func=_run_synthetic)


def _run_synthetic(args) -> int:
    from .io.cremi import read_annotations
    from .synthetic import show, write_synthetic

    path = write_synthetic(args.out, args.shape, seed=args.seed, voxel_size=args.voxel_size, offset=args.offset,
                           overwrite=args.overwrite)
    partners = read_annotations(path)
    tbars = {(int(p["pre_z"]), int(p["pre_y"]), int(p["pre_x"])) for p in partners}
    print(f"{path}: {len(tbars)} T-bars, {len(partners)} partners")
    if args.show:
        print(show(path, args.show))
    if args.manifest:
        from pathlib import Path

        from .io.manifest import add_manifest_sample

        manifest, what = add_manifest_sample(args.manifest, path, args.split)
        print(f"{manifest}: {Path(path).stem} ({args.split}) {what}")
    return 0


def _add_show(sub):
    p = sub.add_parser("show", help="write a PNG of a few z-sections with ground-truth and predicted sites drawn "
                                    "on the raw, with a legend")
    p.add_argument("container", help="zarr / N5 / HDF5 container")
    p.add_argument("--out", help="PNG path (default: the container with suffix .png)")
    p.add_argument("--slices", type=int, default=4, help="number of sections (those with the most sites)")
    p.add_argument("--raw-dataset", default="volumes/raw")
    p.add_argument("--partners", metavar="FILE_OR_RUN",
                   help="predicted partners drawn over the ground truth: a partner file (.json / .csv / .parquet / "
                        ".feather) or a prediction run directory (its result collection)")
    p.add_argument("--min-score", type=float, help="draw only predictions scoring at least this")
    p.add_argument("--ground-truth", metavar="FILE",
                   help="ground-truth partner file (default: the container's CREMI annotations)")
    p.add_argument("--no-ground-truth", action="store_true", help="draw the predictions alone")
    p.set_defaults(func=_run_show)


def _run_show(args) -> int:
    from .synthetic import show

    if args.no_ground_truth and args.ground_truth:
        raise SynfulError("show: --ground-truth and --no-ground-truth exclude each other")
    if args.no_ground_truth and not args.partners:
        raise SynfulError("show: --no-ground-truth needs --partners (nothing would be drawn)")
    if args.min_score is not None and not args.partners:
        raise SynfulError("show: --min-score filters the predictions of --partners")
    print(show(args.container, args.out, num_slices=args.slices, raw_dataset=args.raw_dataset,
               partners=args.ground_truth, predicted=args.partners, min_score=args.min_score,
               ground_truth=not args.no_ground_truth))
    return 0


def _add_segment(sub):
    p = sub.add_parser("segment", help="a neuron segmentation from the raw alone: seeded watershed of the membrane "
                                       "contrast (for [Extraction] seg_container when there is no segmentation)")
    p.add_argument("raw_container", metavar="RAW_CONTAINER", help="container holding the raw (zarr/N5)")
    p.add_argument("out", metavar="OUT", help="zarr container to write the segmentation into (may be RAW_CONTAINER)")
    p.add_argument("--raw-dataset", default="volumes/raw", help="raw dataset (default volumes/raw)")
    p.add_argument("--dataset", default=None, help="output dataset (default volumes/segmentation/watershed)")
    p.add_argument("--sigma-nm", type=float, default=4.0, help="in-plane Gaussian smoothing, nm (default 4)")
    p.add_argument("--membrane-threshold", type=float, default=140.0,
                   help="grey value below which a voxel is membrane (default 140)")
    p.add_argument("--seed-distance-nm", type=float, default=40.0,
                   help="seeds: voxels farther than this from a membrane, nm (default 40)")
    p.add_argument("--link-overlap", type=float, default=0.5,
                   help="merge segments of consecutive sections overlapping by more than this of each (default 0.5)")
    p.add_argument("--overwrite", action="store_true", help="replace an output written with other parameters")
    p.set_defaults(func=_run_segment)


def _run_segment(args) -> int:
    from .segment import SEGMENTATION_DATASET, watershed_segmentation

    dataset = args.dataset or SEGMENTATION_DATASET
    out = watershed_segmentation(args.raw_container, args.out, raw_dataset=args.raw_dataset, out_dataset=dataset,
                                 sigma_nm=args.sigma_nm, membrane_threshold=args.membrane_threshold,
                                 seed_distance_nm=args.seed_distance_nm, link_overlap=args.link_overlap,
                                 overwrite=args.overwrite)
    print(f"segmentation: {out}/{dataset} (use as [Extraction] seg_container = {out}, seg_dataset = {dataset})")
    return 0


def _add_import_synful(sub):
    p = sub.add_parser("import-synful", help="import a Synful (TF1) network: its parameter.json becomes a training "
                                             "setup, its checkpoint our checkpoint (then prepare_prediction.py)")
    p.add_argument("source", metavar="SETUP_DIR_OR_PARAMETER_JSON", help="Synful setup directory or its "
                                                                          "parameter.json")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="TF1 checkpoint prefix (e.g. "
                                                            "p_setup52/train_net_checkpoint_300000), one of its files, "
                                                            "or a directory (its latest)")
    p.add_argument("-e", "--experiment", required=True, help="experiment name")
    p.add_argument("-t", "--train-id", type=int, required=True, help="train id T: creates 02_train/setup_t<T>")
    p.add_argument("-d", "--base-dir", default="experiments", help="experiments base directory (default: "
                                                                   "./experiments)")
    p.add_argument("--pair", nargs=2, metavar=("SETUP_OR_JSON", "CHECKPOINT"), default=None,
                   help="the other single-task network of a pair (e.g. p_setup10 with p_setup52): both go into "
                        "one model with unet_model = paired")
    p.add_argument("--iteration", type=int, default=None, help="iteration of our checkpoint (default: from the "
                                                               "checkpoint name, ..._<N>)")
    p.add_argument("--crop-to-factor", choices=("auto", "yes", "no"), default="auto",
                   help="whether Synful's funlib U-Net cropped each upsampled feature map to the downsampling "
                        "factor (later funlib versions; the checkpoint does not tell); auto: from the output "
                        "shapes in train_net_config.json / output_size, else from what input_size fits")
    p.set_defaults(func=_run_import_synful)


def _run_import_synful(args) -> int:
    from .import_synful import import_synful

    r = import_synful(args.source, args.checkpoint, args.base_dir, args.experiment, args.train_id,
                      pair=args.pair, iteration=args.iteration,
                      crop_to_factor={"auto": None, "yes": True, "no": False}[args.crop_to_factor])
    crop = "with" if r["values"]["crop_to_factor"] else "without"
    print(f"imported {r['values']['unet_model']} network (tasks = {r['values']['tasks']}, {crop} crop_to_factor) "
          f"into {r['setup']}; "
          f"checkpoint {r['checkpoint']} (iteration {r['iteration']}); next: prepare_prediction.py "
          f"-e {args.experiment} -t {args.train_id} -i {r['iteration']} -d {args.base_dir}")
    return 0


def _add_demo(sub):
    p = sub.add_parser("demo", help="the whole workflow on synthetic data: data, scaffold, predict, extract, "
                                    "evaluate (shipped model, or --train)")
    p.add_argument("--dir", default=None, help="experiments base directory (default: ./experiments)")
    p.add_argument("--train", action="store_true", help="train the demo network from scratch instead of using "
                                                        "the shipped model")
    p.add_argument("--iterations", type=int, default=None, help="training iterations with --train")
    p.add_argument("--quick", action="store_true", help="smaller validation and test volumes (for CI)")
    p.add_argument("--workers", type=int, default=2, help="local prediction / extraction workers (default 2)")
    p.add_argument("--save-model", metavar="DIR", default=None,
                   help="with --train: copy the trained checkpoint and its train_config.ini into DIR")
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from .demo import run_demo, save_model

    best = run_demo(args.dir, train=args.train, iterations=args.iterations, quick=args.quick, workers=args.workers)
    if args.save_model:
        from pathlib import Path

        saved = save_model(Path(best["run_dir"]).parent.parent / "02_train" / "setup_t0", out_dir=args.save_model)
        print(f"saved model {saved}")
    for r in (best, best["location"]):
        c = r["calibration"]
        print(f"demo: score threshold {c['score_thr']:g} chosen on the validation volume (fscore "
              f"{c['validation_fscore']:.3f} there; matching = {r['matching']})")
        print(f"demo: test volume at that threshold: precision {r['precision']:.3f} recall {r['recall']:.3f} "
              f"fscore {r['fscore']:.3f} (tp {r['tpcount']}, fp {r['fpcount']}, fn {r['fncount']}; "
              f"matching = {r['matching']})")
    print(f"precision-recall curve: {best['pr_curve_png']}")
    print(f"slices with partners:   {best['slices_png']}")
    return 0


def _add_view(sub):
    p = sub.add_parser("view", help="look at runs, training snapshots or containers in neuroglancer (raw, "
                                    "predictions, segmentations, partners; a local viewer on 127.0.0.1)")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="prediction run directory, training setup (its latest snapshot) or zarr / N5 / HDF5 container")
    p.add_argument("--evaluation", default=None, metavar="DIR",
                   help="evaluation results folder whose true / false positives to show (default: the run's own)")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    p.add_argument("--screenshot", default=None, metavar="PNG",
                   help="save a picture (headless chromium + chromedriver from PATH) and exit")
    p.add_argument("--size", type=int, nargs=2, default=(1200, 800), metavar=("W", "H"),
                   help="screenshot size in pixels (default 1200 800)")
    p.set_defaults(func=_run_view)


def _run_view(args) -> int:
    import time

    from .view import build_viewer, describe, find_browser, screenshot

    if args.screenshot:
        find_browser()  # before building anything: one line when chromium / chromedriver are missing
    viewer, layers = build_viewer(args.paths, evaluation=args.evaluation, port=args.port, size=args.size)
    print("layers:\n" + describe(layers))
    if args.screenshot:
        out = screenshot(viewer, args.screenshot, args.size)
        print(f"screenshot: {out} ({args.size[0]} x {args.size[1]} pixels)")
        return 0
    print(f"neuroglancer: {viewer.get_viewer_url()}  (Ctrl-C ends)", flush=True)
    while True:
        time.sleep(3600)


# Each stage registers its subcommand here, in workflow order.
COMMANDS = [
    _add_validate,
    _add_synthetic,
    _add_show,
    _add_train,
    _add_predict,
    _add_segment,
    _add_extract,
    _add_map_skeletons,
    _add_evaluate,
    _add_status,
    _add_transmitter,
    _add_import_synful,
    _add_embed,
    _add_demo,
    _add_view,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synful", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"synful {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    import logging
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up notices; set 0 to see them

    args = build_parser().parse_args(argv)
    # Called as a library (tests, notebooks), main() leaves logging as it found it: the handler it adds
    # is bound to the sys.stderr of this call, which its owner may close once main() has returned.
    root = logging.getLogger()
    quiet = ("gunpowder", "daisy", "funlib")
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_levels = {name: logging.getLogger(name).level for name in quiet}
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    added = [h for h in root.handlers if h not in saved_handlers]
    if not args.verbose:
        # per-iteration / per-block chatter of the libraries; our progress bars say the same once
        for name in quiet:
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except SynfulError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        for h in added:
            root.removeHandler(h)
            with suppress(ValueError, OSError):  # its stream closed under it: nothing left to flush
                h.flush()
            h.close()  # the stream itself stays open: it is not ours
        root.setLevel(saved_level)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
