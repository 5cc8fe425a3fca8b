"""Training state on disk: a Keras model's weights plus its optimiser's variables, written so that a
checkpoint exists only when complete, and read back for resuming.

``weights_path``: ``*.weights.h5`` (Keras ``save_weights``); ``optimizer_path``: ``*.npz`` of the optimiser's
own variables (Adam's moments and iteration count), written first, so that the weights file -- what the
trainers list as checkpoints -- appears last.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..io.files import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["save_training_state", "restore_training_state"]


def save_training_state(model, optimizer, weights_path, optimizer_path) -> Path:
    """Write ``optimizer``'s variables to ``optimizer_path``, then ``model``'s weights to ``weights_path``
    (each atomically); returns ``weights_path``."""
    from keras import ops

    weights_path, optimizer_path = Path(weights_path), Path(optimizer_path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    store = {}
    optimizer.save_own_variables(store)

    def write_optimizer(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **{k: ops.convert_to_numpy(v) for k, v in store.items()})

    def write_weights(tmp):
        model.save_weights(str(tmp))
        atomic_write(optimizer_path, write_optimizer)

    return atomic_write(weights_path, write_weights)


def restore_training_state(model, optimizer, weights_path, optimizer_path, learning_rate: float) -> None:
    """Load ``model``'s weights and, when ``optimizer_path`` exists, the optimiser's variables (a warning
    otherwise: resuming with a fresh optimiser state); the learning rate is then set to ``learning_rate``
    (the config's value wins over the saved one).  A weights file of another architecture raises Keras's
    ValueError."""
    model.load_weights(str(weights_path))
    optimizer_path = Path(optimizer_path)
    if optimizer_path.is_file():
        with np.load(optimizer_path) as f:
            optimizer.load_own_variables({k: f[k] for k in f.files})
        optimizer.learning_rate.assign(learning_rate)
    else:
        logger.warning("%s: no optimiser state, resuming with a fresh Adam state", optimizer_path)
