"""``synful <stage> ...``: one subcommand per stage.

The CLI only parses arguments and calls each stage's public API; a
:class:`~synful.errors.SynfulError` becomes one ``error: ...`` line on stderr
and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .errors import SynfulError


def _add_validate(sub):
    p = sub.add_parser("validate", help="validate the configs of setup directories (or single ini files)")
    p.add_argument("paths", nargs="+", help="setup directories or ini files")
    p.set_defaults(func=_run_validate)


def _run_validate(args) -> int:
    from pathlib import Path

    from .config import read_predict_config, read_train_config, read_worker_config
    from .scaffold import validate_setup

    readers = {"train_config.ini": read_train_config, "predict_config.ini": read_predict_config,
               "worker_config.ini": read_worker_config}
    for path in map(Path, args.paths):
        if path.is_dir():
            checked = validate_setup(path)
        elif path.name in readers:
            readers[path.name](path)
            checked = [path]
        else:
            raise SynfulError(f"{path}: not a setup directory or a train/predict/worker config")
        for c in checked:
            print(f"ok {c}")
    return 0


# Each stage registers its subcommand here, in workflow order.
COMMANDS = [
    _add_validate,
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

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except SynfulError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
