"""The FAFB evaluation settings: the evaluation JSON (Synful's ``run_evaluate.py`` config) and skeleton id lists.

The JSON holds the [Evaluation] keys of :class:`synful.config.Evaluation` and is
read by the same typed machinery as the ini section (:func:`synful.config.section_values`
with the JSON dialect) and checked by the same cross-key rules
(:func:`synful.config.check_evaluation`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import JSON, ConfigError, Evaluation, check_evaluation, section_values
from ..errors import read_json_file, read_text_file
from .common import EvaluationError, logger

#: keys the evaluation JSON must hold (the others default as in :class:`synful.config.Evaluation`)
JSON_REQUIRED = ("pred_synlinks", "gt_synlinks")

#: cross-key checks shared by the JSON and ini paths (:func:`synful.config.check_evaluation`)
check_settings = check_evaluation


def read_evaluation_json(path) -> Evaluation:
    """Read and validate an evaluation JSON config into :class:`synful.config.Evaluation`.

    The JSON object holds exactly the [Evaluation] keys; ``pred_synlinks`` and
    ``gt_synlinks`` are required, the others default as in the dataclass.
    Relative paths resolve against the config file's folder.  Unknown keys,
    missing required keys, wrong types or out-of-range values raise
    :class:`~synful.config.ConfigError` naming the file and key.
    """
    path = Path(path)
    source = str(path)
    data = read_json_file(path, "config file", ConfigError)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object of evaluation settings")
    values = section_values(Evaluation, data, source, path.parent.resolve(), JSON, required=JSON_REQUIRED)
    for k in JSON_REQUIRED:
        if values[k] is None:
            raise ConfigError(f"{source} {k}: required, got null")
    if "matching" not in data and values.get("skeleton_ids") is not None:
        # Synful's FAFB configs carry no `matching`: their per-neuron protocol matches on skeleton ids
        values["matching"] = "skeleton"
    for k in ("roi_file", "syn_dir"):
        if values.get(k) is not None:
            logger.warning("%s %s: ignored (Synful's evaluator stores this key but never reads it)", source, k)
    return check_settings(Evaluation(**values), source)


def read_skeleton_ids(path) -> np.ndarray:
    """Neuron (skeleton) ids from a text file: one integer per line (first comma/space-separated field).

    Blank lines and ``#`` comments are skipped; a non-numeric first line is
    taken as a header.  Duplicates are dropped (first kept).  Returns int64.
    """
    path = Path(path)
    lines = read_text_file(path, "skeleton id file", EvaluationError).splitlines()
    ids: list[int] = []
    for n, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].replace(",", " ").split()
        if not text:
            continue
        try:
            ids.append(int(text[0]))
        except ValueError:
            if n == 1:
                continue  # header
            raise EvaluationError(f"{path}:{n}: expected a skeleton id (integer), got {text[0]!r}") from None
    unique = list(dict.fromkeys(ids))
    if len(unique) != len(ids):
        logger.warning("%s: %d duplicate skeleton id(s) ignored", path, len(ids) - len(unique))
    if not unique:
        raise EvaluationError(f"{path}: no skeleton ids")
    return np.asarray(unique, dtype=np.int64)
