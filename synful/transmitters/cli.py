"""``synful transmitter <import|split|train|predict|evaluate|synthetic>``: argument parsing only."""

from __future__ import annotations


def add_parser(sub):
    """Register the ``transmitter`` subcommand group on the top-level subparsers ``sub``."""
    p = sub.add_parser("transmitter", help="neurotransmitter classification: import, split, train, predict, evaluate")
    tsub = p.add_subparsers(dest="transmitter_command", metavar="STEP", required=True)

    def store_args(q):
        q.add_argument("store_url", metavar="STORE_URL", help="sqlite:///path or mongodb://host:port")
        q.add_argument("--database", default="synister", help="database name (default: synister)")
        q.add_argument("--credentials-file", help="file whose first line is the MongoDB URL with credentials")
        q.add_argument("--credentials-env", help="environment variable holding the MongoDB URL with credentials")

    q = tsub.add_parser("import", help="import JSON exports of synapses, skeletons, hemilineages (all or nothing)")
    store_args(q)
    q.add_argument("--synapses", help="synapses JSON (synapse_id, x, y, z in nm, skeleton_id, [prepost, brain_region])")
    q.add_argument("--skeletons", help="skeletons JSON (skeleton_id, nt_known, hemi_lineage_id)")
    q.add_argument("--hemilineages", help="hemilineages JSON (hemi_lineage_id, hemi_lineage_name)")
    q.add_argument("--overwrite", action="store_true", help="replace existing collections")
    q.set_defaults(func=_run_import)

    q = tsub.add_parser("split", help="split the labelled synapses into train/validation/test, stored under a name")
    store_args(q)
    q.add_argument("--name", required=True, help="split name (training's split_name)")
    q.add_argument("--kind", choices=("random", "skeleton", "hemilineage"), default="skeleton",
                   help="what never crosses parts (default: skeleton)")
    q.add_argument("--fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST"))
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--synapse-types", nargs="+", help="classes (default: the six FAFB transmitters)")
    q.add_argument("--neither-class", action="store_true", help="label other known transmitters 'neither'")
    q.add_argument("--overwrite", action="store_true", help="replace a split of the same name")
    q.set_defaults(func=_run_split)

    q = tsub.add_parser("train", help="train the VGG3D of a transmitter training setup (resumes)")
    q.add_argument("setup_dir", metavar="SETUP_DIR", help="02_train/setup_t<T> with transmitter_train_config.ini")
    q.add_argument("--iterations", type=int, default=None, metavar="N",
                   help="train up to iteration N (default: [TransmitterTraining] iterations)")
    q.add_argument("--submit", action="store_true", help="submit as a Slurm job (worker_config.ini) instead")
    q.set_defaults(func=_run_train)

    q = tsub.add_parser("predict", help="classify every synapse of a split part into this run's collection")
    q.add_argument("predict_dir", metavar="PREDICT_DIR", help="03_predict/setup_t<T>_p<P> with "
                                                               "transmitter_predict_config.ini")
    q.add_argument("--overwrite", action="store_true", help="replace this run's existing prediction collection")
    q.set_defaults(func=_run_predict)

    q = tsub.add_parser("evaluate", help="accuracy per synapse, skeleton and class; confusion matrix JSON + PNG")
    q.add_argument("predict_dir", metavar="PREDICT_DIR")
    q.set_defaults(func=_run_evaluate)

    from .synthetic_export import SYNTHETIC_DENSITY, SYNTHETIC_SHAPE, SYNTHETIC_VOXEL_SIZE

    q = tsub.add_parser("synthetic", help="synthetic raw volume with transmitter-dependent synapses + JSON exports")
    q.add_argument("out_dir", metavar="OUT_DIR", help="writes raw.zarr, synapses.json, skeletons.json, hemilineages.json")
    q.add_argument("--shape", type=int, nargs=3, default=SYNTHETIC_SHAPE, metavar=("Z", "Y", "X"),
                   help="voxels (default: %(default)s)")
    q.add_argument("--voxel-size", type=int, nargs=3, default=SYNTHETIC_VOXEL_SIZE, metavar=("Z", "Y", "X"),
                   help="nm (default: %(default)s, FAFB's, as [TransmitterTraining] voxel_size)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--synapse-types", nargs="+", help="classes to generate (default: all six)")
    q.add_argument("--density", type=float, default=SYNTHETIC_DENSITY,
                   help="T-bars per cubic micrometre (default: %(default)s)")
    q.set_defaults(func=_run_synthetic)


def _open(args, must_exist: bool = True):
    from .db import open_store

    return open_store(args.store_url, must_exist=must_exist, credentials_file=args.credentials_file,
                      credentials_env=args.credentials_env)


def _run_import(args) -> int:
    from .data import import_collections

    with _open(args, must_exist=False) as store:  # the import creates the store (on its first write)
        s = import_collections(store, args.database, synapses=args.synapses, skeletons=args.skeletons,
                               hemilineages=args.hemilineages, overwrite=args.overwrite)
    print(f"imported {s.synapses} synapses, {s.skeletons} skeletons, {s.hemilineages} hemilineages "
          f"into {args.database}")
    return 0


def _run_split(args) -> int:
    from .splits import create_split

    with _open(args) as store:
        info = create_split(store, args.database, args.name, kind=args.kind, fractions=args.fractions, seed=args.seed,
                            synapse_types=args.synapse_types, neither_class=args.neither_class,
                            overwrite=args.overwrite)
    for part, counts in info.counts.items():
        by_class = ", ".join(f"{c} {n}" for c, n in sorted(counts.items()))
        print(f"{part}: {sum(counts.values())} synapses" + (f" {by_class}" if by_class else ""))
    return 0


def _run_train(args) -> int:
    from .train import submit_training, train

    if args.submit:
        job = submit_training(args.setup_dir, args.iterations)
        print(f"submitted job {job.job_id}; log {job.stdout}")
        return 0
    result = train(args.setup_dir, args.iterations)
    print(f"trained to iteration {result['iteration']}; checkpoint {result['checkpoint']}")
    return 0


def _run_predict(args) -> int:
    from .predict import predict

    meta = predict(args.predict_dir, overwrite=args.overwrite or None)
    print(f"predicted {meta['synapses']} synapses into {meta['collection']} in {meta['wall_seconds']:.1f} s")
    return 0


def _run_evaluate(args) -> int:
    from .evaluate import evaluate_run

    result = evaluate_run(args.predict_dir)
    print(f"accuracy: synapse {result['synapse_accuracy']:.4f}, skeleton {result['skeleton_accuracy']:.4f} "
          f"({result['num_synapses']} synapses, {result['num_skeletons']} skeletons); results in {result['out_dir']}")
    return 0


def _run_synthetic(args) -> int:
    from .synthetic_export import write_synthetic_dataset

    paths = write_synthetic_dataset(args.out_dir, shape=args.shape, voxel_size=args.voxel_size, seed=args.seed,
                                    synapse_types=args.synapse_types, synapse_density=args.density)
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0
