#!/usr/bin/env python
"""Scaffold prediction setups: python prepare_prediction.py -e EXP -t T -i ITER [ITER ...] [-d BASE_DIR] [-v]"""

import argparse
import sys
from pathlib import Path

from synful.errors import SynfulError
from synful.scaffold import create_predict_setups


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("-e", "--experiment", required=True, help="experiment name")
    p.add_argument("-t", "--train-id", type=int, required=True, help="train setup id")
    p.add_argument("-i", "--iterations", type=int, nargs="+", required=True, help="checkpoint iterations")
    p.add_argument("-d", "--base-dir", default=str(Path(__file__).resolve().parent / "experiments"),
                   help="experiments base directory (default: experiments/ beside this script)")
    p.add_argument("-v", "--validation", action="store_true", help="predict the validation split (default: test)")
    p.add_argument("--allow-missing-checkpoints", action="store_true",
                   help="scaffold even when an iteration has no checkpoint yet (training still running)")
    args = p.parse_args(argv)
    try:
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
