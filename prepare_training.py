#!/usr/bin/env python
"""Scaffold a training setup: python prepare_training.py -e EXP -t T [--kind transmitter] [-d BASE_DIR] [-c] [--yes]"""

import argparse
import sys
from pathlib import Path

from synful.errors import SynfulError
from synful.scaffold import create_train_setup, remove_train_setup, train_setup_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("-e", "--experiment", required=True, help="experiment name")
    p.add_argument("-t", "--train-id", type=int, required=True, help="train setup id")
    p.add_argument("-d", "--base-dir", default=str(Path(__file__).resolve().parent / "experiments"),
                   help="experiments base directory (default: experiments/ beside this script)")
    p.add_argument("--kind", choices=("partner", "transmitter"), default="partner",
                   help="partner detection (U-Net, default) or neurotransmitter classification (VGG3D)")
    p.add_argument("-c", "--clean", action="store_true", help="remove the setup (asks first)")
    p.add_argument("--yes", action="store_true", help="do not ask before removing")
    args = p.parse_args(argv)
    try:
        if args.clean:
            target = train_setup_dir(args.base_dir, args.experiment, args.train_id)
            if not args.yes:
                answer = input(f"remove {target} and everything in it? [y/N] ") if sys.stdin.isatty() else ""
                if answer.strip().lower() not in ("y", "yes"):
                    print(f"error: not removing {target} (confirm, or pass --yes)", file=sys.stderr)
                    return 1
            print(f"removed {remove_train_setup(args.base_dir, args.experiment, args.train_id)}")
            return 0
        print(f"created {create_train_setup(args.base_dir, args.experiment, args.train_id, kind=args.kind)}")
        return 0
    except SynfulError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
