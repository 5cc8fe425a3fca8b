"""Keras training and iteration-named snapshots as gunpowder nodes (gunpowder's own TF nodes are TF1-only)."""

from __future__ import annotations

import logging
from typing import Protocol

import gunpowder as gp
from gunpowder.nodes.generic_train import GenericTrain
import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["Trainer", "KerasTrain", "IterationSnapshot", "to_network", "from_network"]


class Trainer(Protocol):
    """What :class:`KerasTrain` drives: one optimisation step on numpy arrays.

    ``iteration`` counts the steps done (including those of a restored checkpoint).
    ``train_step(inputs, targets)`` gets network-layout arrays ``(1, z, y, x, c)`` keyed by name,
    performs one step, increments ``iteration`` and returns ``(losses, outputs)``: scalar floats
    (``losses["loss"]`` is the optimised total) and network-layout output arrays.
    """

    iteration: int

    def train_step(self, inputs: dict, targets: dict) -> tuple[dict, dict]: ...


def to_network(data: np.ndarray) -> np.ndarray:
    """gunpowder layout ``(z, y, x)`` or ``(c, z, y, x)`` -> network layout ``(1, z, y, x, c)`` float32."""
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 3:
        return data[None, ..., None]
    if data.ndim == 4:
        return np.moveaxis(data, 0, -1)[None]
    raise ValueError(f"expected a (z, y, x) or (c, z, y, x) array, got shape {data.shape}")


def from_network(data: np.ndarray) -> np.ndarray:
    """Network layout ``(1, z, y, x, c)`` -> gunpowder layout: ``(z, y, x)`` for c = 1, else ``(c, z, y, x)``."""
    data = np.asarray(data)[0]
    if data.shape[-1] == 1:
        return data[..., 0]
    return np.moveaxis(data, -1, 0)


class KerasTrain(GenericTrain):
    """Performs one training step of a Keras model per batch that passes through.

    The arrays of ``inputs`` and ``targets`` are handed to ``trainer.train_step`` in network
    layout (batch axis first, channels last: ``(1, z, y, x, c)``); the outputs it returns are
    written back, in gunpowder layout (``(z, y, x)`` for one channel, else ``(c, z, y, x)``), to
    the arrays of ``outputs`` that were requested, on their requested ROI (the network's output
    shape must match it).  Sets ``batch.loss`` and ``batch.iteration`` (the steps done so far,
    counting restored ones); the step's scalar losses are kept in :attr:`last_losses`.

    Args:

        trainer (:class:`Trainer`):

            Holds model and optimiser; its ``train_step`` performs the step.

        inputs (``dict``, ``str`` -> :class:`gunpowder.ArrayKey`):

            Network inputs by name.

        targets (``dict``, ``str`` -> :class:`gunpowder.ArrayKey`):

            Loss inputs (targets, weights, masks) by name.

        outputs (``dict``, ``str`` -> :class:`gunpowder.ArrayKey`):

            Arrays to create from the step's outputs, by output name.

        array_specs (``dict``, :class:`gunpowder.ArrayKey` -> :class:`gunpowder.ArraySpec`, optional):

            Specs of the created arrays (e.g. their ``dtype``); voxel size defaults to the inputs'.
    """

    def __init__(self, trainer: Trainer, inputs: dict, targets: dict, outputs: dict, array_specs=None):
        super().__init__({**inputs, **targets}, outputs, {}, array_specs=array_specs, spawn_subprocess=False)
        self.trainer = trainer
        self.network_inputs = dict(inputs)
        self.targets = dict(targets)
        self.last_losses: dict[str, float] = {}

    def train_step(self, batch, request):
        inputs = {name: to_network(batch.arrays[key].data) for name, key in self.network_inputs.items()}
        targets = {name: to_network(batch.arrays[key].data) for name, key in self.targets.items()}
        losses, outputs = self.trainer.train_step(inputs, targets)
        self.last_losses = dict(losses)
        for name, key in self.outputs.items():
            if key not in request:
                continue
            spec = self.spec[key].copy()
            spec.roi = request[key].roi
            data = from_network(outputs[name])
            expected = tuple(spec.roi.shape / spec.voxel_size)
            if tuple(data.shape[-3:]) != expected:
                raise RuntimeError(f"output {name} has shape {data.shape[-3:]}, but {key} asks for {expected} voxels")
            if spec.dtype is not None:
                data = data.astype(spec.dtype)
            batch.arrays[key] = gp.Array(data, spec)
        batch.loss = float(losses["loss"])
        batch.iteration = int(self.trainer.iteration)


class IterationSnapshot(gp.Snapshot):
    """:class:`gunpowder.Snapshot` that writes a batch when its training iteration is a multiple of ``every``.

    gunpowder's Snapshot counts the batches it has seen; after a resumed training that count
    differs from the iteration, so this node decides by ``batch.iteration`` instead (set by
    :class:`KerasTrain` upstream).  ``every = 0`` writes nothing.  Arguments as
    :class:`gunpowder.Snapshot` (``output_filename`` may use ``{iteration}``).
    """

    def __init__(self, dataset_names, output_dir="snapshots", output_filename="batch_{iteration}.zarr", every=1,
                 **kwargs):
        super().__init__(dataset_names, output_dir=output_dir, output_filename=output_filename, every=1, **kwargs)
        self.every_iteration = int(every)

    def write_if(self, batch):
        it = batch.iteration
        return bool(self.every_iteration) and it is not None and int(it) % self.every_iteration == 0
