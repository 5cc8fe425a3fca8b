"""Reading ini config files: every section parsed and checked up front (:func:`read_config`)."""

from __future__ import annotations

import configparser
import os
from pathlib import Path

from .checks import check_evaluation, check_worker_section
from .keys import ConfigError, section_name, section_values
from .sections import (PREDICT_SECTIONS, TRAIN_SECTIONS, TRANSMITTER_PREDICT_SECTIONS, TRANSMITTER_TRAIN_SECTIONS,
                       WORKER_SECTIONS, Evaluation, Extraction, PredictConfig, Prediction, Training,
                       TransmitterPrediction, TransmitterTraining, Worker)


def read_config(path: str | os.PathLike, sections: tuple = (), *, resolve_paths: bool = True) -> dict:
    """Read and validate an ini file holding exactly ``sections`` (section dataclasses).

    Returns ``{section class: instance}``.  Raises :class:`ConfigError` naming
    the file (and section and key) for an unreadable file, a missing or unknown
    section, an unknown or missing key, or a value of the wrong type or range.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError(f"{source}: config file not found")
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"),
                                       default_section="__no_default__")
    parser.optionxform = str  # keys are case-sensitive
    try:
        parser.read(path, encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise ConfigError(f"{source}: line {line}: not UTF-8 text (byte 0x{e.object[e.start]:02x})") from None
    except configparser.Error as e:
        raise ConfigError(f"{source}: {_ini_error_line(e)}not a valid ini file: {str(e).splitlines()[0]}") from None
    by_name = {section_name(c): c for c in sections}
    for s in parser.sections():
        if s not in by_name:
            raise ConfigError(f"{source} [{s}]: unknown section (expected {', '.join(by_name)})")
    out = {}
    base_dir = path.parent.resolve() if resolve_paths else None
    for name, cls in by_name.items():
        if not parser.has_section(name):
            raise ConfigError(f"{source} [{name}]: missing section")
        out[cls] = cls(**section_values(cls, dict(parser.items(name)), f"{source} [{name}]", base_dir))
    return out


def _ini_error_line(e: configparser.Error) -> str:
    """``"line N: "`` for a configparser error that knows where it happened, else ``""``."""
    lineno = getattr(e, "lineno", None)
    if lineno is None and getattr(e, "errors", None):  # ParsingError: [(lineno, line), ...]
        lineno = e.errors[0][0]
    return f"line {lineno}: " if lineno is not None else ""


def read_train_config(path) -> Training:
    """Read a train_config.ini ([Training])."""
    return read_config(path, TRAIN_SECTIONS)[Training]


def read_predict_config(path) -> PredictConfig:
    """Read a predict_config.ini ([Prediction], [Extraction], [Evaluation]), cross-key checks included."""
    c = read_config(path, PREDICT_SECTIONS)
    check_evaluation(c[Evaluation], f"{path} [Evaluation]")
    return PredictConfig(prediction=c[Prediction], extraction=c[Extraction], evaluation=c[Evaluation])


def read_worker_config(path) -> Worker:
    """Read a worker_config.ini ([Worker]); its strings are checked by :func:`check_worker_section`."""
    return check_worker_section(read_config(path, WORKER_SECTIONS)[Worker], f"{path} [Worker]")


def read_transmitter_train_config(path) -> TransmitterTraining:
    """Read a transmitter_train_config.ini ([TransmitterTraining])."""
    return read_config(path, TRANSMITTER_TRAIN_SECTIONS)[TransmitterTraining]


def read_transmitter_predict_config(path) -> TransmitterPrediction:
    """Read a transmitter_predict_config.ini ([TransmitterPrediction])."""
    return read_config(path, TRANSMITTER_PREDICT_SECTIONS)[TransmitterPrediction]
