"""The pipelined prediction worker: reads ahead, encodes on the device and writes in the background, yet
stores the same values as the sequential path, and reports a block done only once its write succeeded.

The toy network and raw volume of ``test_predict.py`` (a shape that is no multiple of the block); the
sequential reference is daisy's in-process mode (:meth:`BlockPredictor.process`: read, network, write
one after another), the pipelined run two worker processes (:func:`synful.predict.workers.serve_pipelined`).
A write failure is a real one: a directory where the output chunk of one block must go.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_predict import RAW_SHAPE, TRAINING, make_experiment, predict_setup, read_outputs

from synful.predict import PredictionError, plan_prediction, predict

PREDICTION = {"indicator_dtype": "uint8", "vectors_dtype": "int8", "vectors_int8_nm": 0.05, "padding": "mirror",
              "block_factor": (2, 1, 1), "batch_size": 2}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    return make_experiment(tmp_path_factory.mktemp("pipeline"), "exp", TRAINING, RAW_SHAPE)


@pytest.fixture(scope="module")
def sequential(experiment):
    """Stored indicator and vectors of the sequential in-process run."""
    setup = predict_setup(experiment, PREDICTION, {"num_block_workers": 1})
    meta = predict(setup, progress=False, in_process=True)
    assert meta["complete"] and meta["workers"]["executor"] == "in_process"
    ind, vec = read_outputs(setup)
    out = ind[ind.roi], vec[vec.roi]
    shutil.rmtree(setup)  # the next setup of this experiment gets the same run directory
    return out


def test_pipelined_workers_store_what_the_sequential_path_stores(experiment, sequential):
    setup = predict_setup(experiment, PREDICTION, {"num_block_workers": 2, "max_retries": 0})
    plan = plan_prediction(setup)
    assert any(s % b for s, b in zip(plan.roi.shape, plan.block_write))  # far-end blocks are cropped
    meta = predict(setup, progress=False)
    assert meta["complete"] and meta["workers"]["count"] == 2
    assert meta["blocks"]["processed"] == plan.num_blocks > 2 * 3  # more blocks than a worker holds
    ind, vec = read_outputs(setup)
    want_ind, want_vec = sequential
    assert len(np.unique(want_ind)) > 50 and len(np.unique(want_vec)) > 50  # values vary: the test means something
    assert np.array_equal(ind[ind.roi], want_ind) and np.array_equal(vec[vec.roi], want_vec)
    shutil.rmtree(setup)


def chunk_path(plan, head_dataset: str, block_index, channels: bool) -> Path:
    """The zarr v2 chunk file of the write block ``block_index`` (chunks are write blocks)."""
    ds = Path(plan.prediction.out_container) / head_dataset
    sep = json.loads((ds / ".zarray").read_text()).get("dimension_separator") or "."
    return ds / sep.join(str(i) for i in ((0,) if channels else ()) + tuple(block_index))


def test_failed_write_leaves_its_block_not_done_and_a_rerun_completes_it(experiment, sequential, tmp_path):
    from synful.predict.run import _start_run

    setup = predict_setup(experiment, PREDICTION, {"num_block_workers": 2, "max_retries": 1})
    plan = plan_prediction(setup)
    _start_run(plan, overwrite=False)  # what predict() does first: outputs prepared, run signature written
    # the block in the middle of the grid cannot store its vectors: its chunk path is a symbolic link to a
    # directory, which zarr refuses to replace (a directory it would remove, a link it does not)
    grid = [-(-s // b) for s, b in zip(plan.roi.shape, plan.block_write)]
    middle = tuple(g // 2 for g in grid)
    blocker = chunk_path(plan, plan.prediction.vectors_dataset, middle, channels=True)
    blocker.parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "elsewhere").mkdir()
    blocker.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(PredictionError, match="did not finish"):
        predict(setup, progress=False)
    first = json.loads(plan.metadata_path.read_text())
    assert not first["complete"] and first["blocks"]["failed"] >= 1
    assert first["blocks"]["processed"] == plan.num_blocks - 1  # every other block is done
    assert blocker.is_symlink()  # nothing was written in its place
    logs = "".join(f.read_text(errors="replace") for f in plan.log_dir.rglob("*.err"))
    assert "symbolic link" in logs  # the worker's write failed (not something else)

    blocker.unlink()
    meta = predict(setup, progress=False)
    assert meta["complete"]
    assert meta["blocks"]["processed"] == 1 and meta["blocks"]["skipped"] == plan.num_blocks - 1
    ind, vec = read_outputs(setup)
    assert np.array_equal(ind[ind.roi], sequential[0]) and np.array_equal(vec[vec.roi], sequential[1])
    shutil.rmtree(setup)


def test_device_normalisation_equals_numpy_for_every_raw_value():
    import tensorflow as tf

    from synful.models import normalize_raw
    from synful.predict.network import normalize_tf

    raw = np.arange(256, dtype=np.uint8).reshape(4, 8, 8)
    compiled = tf.function(lambda x, unit: normalize_tf(x, unit))
    assert np.array_equal(normalize_tf(raw).numpy(), normalize_raw(raw))
    assert np.array_equal(compiled(raw, tf.constant(255.0)).numpy(), normalize_raw(raw))


def test_device_encoding_depends_on_the_value_only_not_its_position():
    """The sigmoid of a value is the same wherever it sits in a tensor of any size (see ``_sigmoid``)."""
    from synful.predict.network import encode_heads

    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, 4099).astype(np.float32)
    whole = encode_heads({"syn_indicator": logits.reshape(1, 1, 1, -1, 1)}, sigmoid=True, indicator_dtype="float32",
                         vectors_dtype="float32", vectors_scale=1.0)["syn_indicator"].numpy().ravel()
    for start, stop in ((0, 7), (5, 133), (4000, 4099), (1, 4098)):  # tails of every length
        part = encode_heads({"syn_indicator": logits[start:stop].reshape(1, 1, 1, -1, 1)}, sigmoid=True,
                            indicator_dtype="float32", vectors_dtype="float32",
                            vectors_scale=1.0)["syn_indicator"].numpy().ravel()
        assert np.array_equal(part, whole[start:stop]), (start, stop)
