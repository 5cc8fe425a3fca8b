#!/usr/bin/env python
"""Scaffold prediction setups: python prepare_prediction.py -e EXP -t T -i ITER [ITER ...] [-d BASE_DIR] [-v]

Remove prediction setups: python prepare_prediction.py -e EXP -t T -p P [P ...] -c [--yes]
(03_predict/setup_t<T>_p<P> with its outputs, logs and an SQLite store inside it; asks once, --yes does not ask;
result collections in a MongoDB store stay).
"""

import argparse
import sys
from pathlib import Path

from prepare_training import confirm
from synful.errors import SynfulError
from synful.scaffold import create_predict_setups, predict_setup_dir, remove_predict_setup


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-e", "--experiment", required=True, help="experiment name")
    p.add_argument("-t", "--train-id", type=int, required=True, help="train setup id")
    p.add_argument("-i", "--iterations", type=int, nargs="+", help="checkpoint iterations (one setup each)")
    p.add_argument("-p", "--predict-id", type=int, nargs="+", help="with -c: the prediction setups to remove")
    p.add_argument("-d", "--base-dir", default=str(Path(__file__).resolve().parent / "experiments"),
                   help="experiments base directory (default: experiments/ beside this script)")
    p.add_argument("-v", "--validation", action="store_true", help="predict the validation split (default: test; an embedding setup: every synapse)")
    p.add_argument("--allow-missing-checkpoints", action="store_true",
                   help="scaffold even when an iteration has no checkpoint yet (training still running)")
    p.add_argument("-c", "--clean", action="store_true", help="remove the prediction setups -p (lists them and asks first)")
    p.add_argument("--yes", action="store_true", help="do not ask before removing")
    args = p.parse_args(argv)
    if args.clean and (not args.predict_id or args.iterations):
        p.error("-c removes the prediction setups given with -p P [P ...] (and takes no -i)")
    if not args.clean and (not args.iterations or args.predict_id):
        p.error("give the checkpoint iterations to predict with -i ITER [ITER ...] (-p only with -c)")
    try:
        if args.clean:
            targets = [predict_setup_dir(args.base_dir, args.experiment, args.train_id, n) for n in args.predict_id]
            for t in targets:
                if not t.is_dir():
                    raise SynfulError(f"{t}: no such setup")
            if not confirm(targets, args.yes):
                print(f"error: not removing {', '.join(map(str, targets))} (confirm, or pass --yes)", file=sys.stderr)
                return 1
            for n in args.predict_id:
                print(f"removed {remove_predict_setup(args.base_dir, args.experiment, args.train_id, n)}")
            return 0
        for d in create_predict_setups(args.base_dir, args.experiment, args.train_id, args.iterations,
                                       validation=args.validation,
                                       require_checkpoints=not args.allow_missing_checkpoints):
            print(f"created {d}")
        return 0
    except SynfulError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
