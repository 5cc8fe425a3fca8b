"""``synful embed <train|predict|evaluate>``: argument parsing only."""

from __future__ import annotations


def add_parser(sub):
    """Register the ``embed`` subcommand group on the top-level subparsers ``sub``."""
    p = sub.add_parser("embed", help="self-supervised synapse embeddings (SimCLR): train, predict, evaluate")
    esub = p.add_subparsers(dest="embed_command", metavar="STEP", required=True)

    q = esub.add_parser("train", help="train the encoder of an embedding training setup (resumes)")
    q.add_argument("setup_dir", metavar="SETUP_DIR", help="02_train/setup_t<T> with embedding_train_config.ini")
    q.add_argument("--iterations", type=int, default=None, metavar="N",
                   help="train up to iteration N (default: [EmbeddingTraining] iterations)")
    q.add_argument("--submit", action="store_true", help="submit as a Slurm job (worker_config.ini) instead")
    q.set_defaults(func=_run_train)

    q = esub.add_parser("predict", help="one embedding per synapse into this run's collection")
    q.add_argument("predict_dir", metavar="PREDICT_DIR", help="03_predict/setup_t<T>_p<P> with "
                                                               "embedding_predict_config.ini")
    q.add_argument("--overwrite", action="store_true", help="replace this run's existing embedding collection")
    q.set_defaults(func=_run_predict)

    q = esub.add_parser("evaluate", help="linear probe, silhouette, Hopkins statistic; UMAP and PCA pictures")
    q.add_argument("predict_dir", metavar="PREDICT_DIR")
    q.add_argument("--baseline", action="store_true",
                   help="also evaluate an untrained encoder of the same architecture on the same synapses")
    q.set_defaults(func=_run_evaluate)


def _run_train(args) -> int:
    from .train import submit_training, train

    if args.submit:
        job = submit_training(args.setup_dir, args.iterations)
        print(f"submitted job {job.job_id}; log {job.stdout}")
        return 0
    result = train(args.setup_dir, args.iterations)
    last = f"; last loss {result['losses'][-1][1]:.4f}" if result["losses"] else ""
    print(f"trained to iteration {result['iteration']} on {result['train_synapses']} synapses; "
          f"checkpoint {result['checkpoint']}{last}")
    return 0


def _run_predict(args) -> int:
    from .predict import predict

    meta = predict(args.predict_dir, overwrite=args.overwrite or None)
    print(f"embedded {meta['embedded_now']} of {meta['synapses']} synapses ({meta['dim']} dims, float16) into "
          f"{meta['database']}.{meta['collection']} in {meta['wall_seconds']:.1f} s")
    return 0


def _fmt_probe(p: dict) -> str:
    return f"{p['accuracy']:.3f} (chance {p['chance']:.3f}, majority {p['majority']:.3f})"


def _run_evaluate(args) -> int:
    from .evaluate import evaluate_run

    r = evaluate_run(args.predict_dir, baseline=args.baseline)
    print(f"{r['num_synapses']} embeddings of {r['dim']} dims: Hopkins {r['hopkins']:.3f}"
          + (f", silhouette (transmitter) {r['silhouette_transmitter']:.3f}" if "silhouette_transmitter" in r else ""))
    if "probe_cv" in r:
        p = r["probe_cv"]
        print(f"linear probe, {p['folds']}-fold{' grouped by skeleton' if p['grouped'] else ''}: "
              f"{p['accuracy']:.3f} +- {p['std']:.3f} (chance {p['chance']:.3f})")
    if "held_out" in r:
        print(f"linear probe, split train -> test ({r['held_out']['n_test']} held-out synapses): "
              f"{_fmt_probe(r['held_out'])}")
    if "random_encoder" in r and "held_out" in r["random_encoder"]:
        b = r["random_encoder"]
        print(f"untrained encoder: probe train -> test {_fmt_probe(b['held_out'])}, cv {b['probe_cv']['accuracy']:.3f}, "
              f"Hopkins {b['hopkins']:.3f}, silhouette {b['silhouette_transmitter']:.3f}")
    if "supervised" in r:
        c = r["supervised"]
        print(f"on {c['synapses']} synapses of {c['run']}: supervised {c['supervised_accuracy']:.3f}, "
              f"probe {c['probe_accuracy']:.3f}")
    print(f"results in {r['out_dir']}")
    return 0
