#!/usr/bin/env python
"""Scaffold a training setup: python prepare_training.py -e EXP -t T [--kind transmitter|embedding] [--set KEY=VALUE ...]
[-d BASE_DIR] [-c] [--yes]

-c removes the training setup and its prediction setups (03_predict/setup_t<T>_p*), after listing them and
asking once (--yes does not ask); result collections in a MongoDB store stay.
"""

import argparse
import sys
from pathlib import Path

from synful.errors import SynfulError
from synful.scaffold import (create_train_setup, list_predict_setups, remove_train_setup, train_setup_dir,
                             validate_setup)

#: the train config file and its section that --set writes into, per kind
SET_TARGET = {"partner": ("train_config.ini", "Training"),
              "transmitter": ("transmitter_train_config.ini", "TransmitterTraining"),
              "embedding": ("embedding_train_config.ini", "EmbeddingTraining")}


def _overrides(kind: str, items) -> dict:
    """``{file: {section: {key: value}}}`` from ``KEY=VALUE`` strings (values as written in an ini file)."""
    values = {}
    for item in items or ():
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise SynfulError(f"--set {item!r}: expected KEY=VALUE, e.g. fc_size=256")
        values[k.strip()] = v.strip()
    file, section = SET_TARGET[kind]
    return {file: {section: values}} if values else {}


def confirm(targets, yes: bool) -> bool:
    """True when ``targets`` may be removed: ``yes``, or the user answered y on a terminal (listing them first)."""
    if yes:
        return True
    if not sys.stdin.isatty():
        return False
    print("\n".join(f"  {t}" for t in targets))
    answer = input(f"remove {'this directory' if len(targets) == 1 else f'these {len(targets)} directories'} "
                   f"and everything in them? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-e", "--experiment", required=True, help="experiment name")
    p.add_argument("-t", "--train-id", type=int, required=True, help="train setup id")
    p.add_argument("-d", "--base-dir", default=str(Path(__file__).resolve().parent / "experiments"),
                   help="experiments base directory (default: experiments/ beside this script)")
    p.add_argument("--kind", choices=("partner", "transmitter", "embedding"), default="partner",
                   help="partner detection (U-Net, default), neurotransmitter classification (VGG3D) or "
                        "self-supervised synapse embeddings (SimCLR)")
    p.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="set keys of the new train config ([Training], [TransmitterTraining] or [EmbeddingTraining]), "
                        "e.g. --set fc_size=256 'input_shape=16, 160, 160'")
    p.add_argument("-c", "--clean", action="store_true",
                   help="remove the setup and its prediction setups (lists them and asks first)")
    p.add_argument("--yes", action="store_true", help="do not ask before removing")
    args = p.parse_args(argv)
    try:
        if args.clean:
            target = train_setup_dir(args.base_dir, args.experiment, args.train_id)
            if not target.is_dir():
                raise SynfulError(f"{target}: no such setup")
            targets = list_predict_setups(args.base_dir, args.experiment, args.train_id) + [target]
            if not confirm(targets, args.yes):
                print(f"error: not removing {target}" + (f" and {len(targets) - 1} prediction setup(s)"
                                                         if len(targets) > 1 else "")
                      + " (confirm, or pass --yes)", file=sys.stderr)
                return 1
            for d in remove_train_setup(args.base_dir, args.experiment, args.train_id):
                print(f"removed {d}")
            return 0
        target = create_train_setup(args.base_dir, args.experiment, args.train_id, kind=args.kind,
                                    overrides=_overrides(args.kind, args.set))
        if args.set:
            try:
                validate_setup(target)  # a --set value the config cannot read leaves no setup behind
            except SynfulError:
                remove_train_setup(args.base_dir, args.experiment, args.train_id)
                raise
        print(f"created {target}")
        return 0
    except SynfulError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
