"""Typed, validated configs (ini files, and the evaluation JSON).

Every run of synful is driven by ini files (``train_config.ini``,
``predict_config.ini``, ``worker_config.ini``).  Each ini section maps to one
frozen dataclass (:mod:`.sections`); each field carries its type, default and a one-line
doc (``doc`` metadata) from which the commented templates in ``configs/`` and
the README's key reference are generated, so the three can never drift.

Reading validates everything up front and raises :class:`ConfigError` whose
message names the place, e.g.::

    experiments/exp/02_train/setup_t0/train_config.ini [Training] fmap_num: expected an integer, got 'four'

Conventions: lengths, offsets and radii are in nm; shapes in voxels; all
3-tuples are (z, y, x).  Path-valued keys that are relative resolve against
the folder of the ini file that holds them.  The evaluation JSON of the FAFB
benchmark (:func:`synful.evaluate.read_evaluation_json`) holds the [Evaluation]
keys and is read by the same typed machinery.

Layout: :mod:`.keys` (declaring, converting and checking typed keys, ini and
JSON), :mod:`.sections` (the dataclasses), :mod:`.checks` (rules across keys),
:mod:`.reading` (ini files), :mod:`.templates` (templates, resolved configs,
README reference; ``python -m synful.config``).
"""

from __future__ import annotations

from .checks import (EVALUATION_RULES, SBATCH_OPTION_RE, SLURM_MEM_RE, SLURM_NAME_RE, SLURM_TIME_RE, CrossKeyRule,
                     check_evaluation, check_worker_section, uses_geodesic)
from .keys import INI, JSON, ConfigError, Dialect, Float3, Int3, check_value, key, section_name, section_values, to_dict
from .reading import (read_config, read_predict_config, read_train_config, read_transmitter_predict_config,
                      read_transmitter_train_config, read_worker_config)
from .sections import (FILTER_REDUNDANT_DIST_TYPES, MATCHING_MODES, PREDICT_SECTIONS, SYNAPSE_TYPES, TRAIN_SECTIONS,
                       TRANSMITTER_PREDICT_SECTIONS, TRANSMITTER_TRAIN_SECTIONS, WORKER_SECTIONS, Evaluation,
                       Extraction, PredictConfig, Prediction, Training, TransmitterPrediction, TransmitterTraining,
                       Worker)
from .templates import (CONFIG_FILES, README_BEGIN, README_END, config_reference_markdown, fill_template,
                        render_template, update_readme, write_config, write_templates)

__all__ = [
    "ConfigError",
    "Training",
    "Prediction",
    "Extraction",
    "Evaluation",
    "Worker",
    "PredictConfig",
    "TRAIN_SECTIONS",
    "PREDICT_SECTIONS",
    "WORKER_SECTIONS",
    "SYNAPSE_TYPES",
    "TransmitterTraining",
    "TransmitterPrediction",
    "TRANSMITTER_TRAIN_SECTIONS",
    "TRANSMITTER_PREDICT_SECTIONS",
    "read_transmitter_train_config",
    "read_transmitter_predict_config",
    "read_config",
    "read_train_config",
    "read_predict_config",
    "read_worker_config",
    "check_worker_section",
    "check_evaluation",
    "MATCHING_MODES",
    "FILTER_REDUNDANT_DIST_TYPES",
    "write_config",
    "render_template",
    "fill_template",
    "config_reference_markdown",
    "to_dict",
]
