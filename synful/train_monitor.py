"""Training monitoring: TensorBoard scalars and images, GPU state (pynvml), provenance of a run."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from . import __version__
from .config import Training, to_dict, write_config
from .io.files import git_commit, write_json

__all__ = ["GpuMonitor"]

logger = logging.getLogger("synful.train")

class GpuMonitor:
    """Memory and utilisation of the GPUs TensorFlow uses, through pynvml; inactive without GPU."""

    def __init__(self):
        self.handles = []
        try:
            import tensorflow as tf

            n = len(tf.config.list_physical_devices("GPU"))
            if n == 0:
                return
            import pynvml

            pynvml.nvmlInit()
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(n)]
            for dev in ids[:n]:
                if dev.isdigit():
                    self.handles.append((dev, pynvml.nvmlDeviceGetHandleByIndex(int(dev))))
                else:
                    self.handles.append((dev, pynvml.nvmlDeviceGetHandleByUUID(dev)))
        except Exception as e:  # no driver / library: monitoring is optional
            logger.debug("GPU monitoring off: %s", e)
            self.handles = []

    def device_names(self) -> list[str]:
        import pynvml

        return [str(pynvml.nvmlDeviceGetName(h)) for _, h in self.handles]

    def sample(self) -> dict[str, float]:
        """``{"gpu<i>/memory_used_mib", "gpu<i>/memory_total_mib", "gpu<i>/utilization_percent"}``."""
        out = {}
        if not self.handles:
            return out
        import pynvml

        for i, (_, h) in enumerate(self.handles):
            try:
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                util = pynvml.nvmlDeviceGetUtilizationRates(h)
            except pynvml.NVMLError as e:
                logger.debug("pynvml: %s", e)
                continue
            out[f"gpu{i}/memory_used_mib"] = mem.used / 2 ** 20
            out[f"gpu{i}/memory_total_mib"] = mem.total / 2 ** 20
            out[f"gpu{i}/utilization_percent"] = float(util.gpu)
        return out

def _device_name() -> str:
    import platform

    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"{len(gpus)} x {details.get('device_name', 'GPU')}"
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"

def _write_provenance(d: Path, cfg: Training, start: int, target: int, mixed: bool):
    """``resolved_train_config.ini`` and ``provenance.json`` (versions, commit, device, config) in ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    write_config(d / "resolved_train_config.ini", cfg)
    import keras
    import tensorflow as tf

    info = {"synful_version": __version__, "git_commit": git_commit(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "device": _device_name(), "mixed_precision": mixed, "xla": cfg.xla,
            "start_iteration": start, "target_iteration": target,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": to_dict(cfg)}
    write_json(d / "provenance.json", info, default=str)

def _image_summaries(batch, keys, step: int):
    """Central z-section of raw (output ROI), ground-truth and predicted indicator, vector lengths."""
    import tensorflow as tf

    def section(a):
        a = np.asarray(a, dtype=np.float32)
        return a[a.shape[0] // 2]

    def scaled(a, lo, hi):
        return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)

    def image(tag, a):
        # rounded to uint8 here: tf.summary.image would truncate float pixels (255.5 x) instead
        pixels = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
        tf.summary.image(tag, pixels[None, ..., None], step=step)

    out_roi = batch[keys.gt_indicator].spec.roi
    image("raw", scaled(section(batch[keys.raw].crop(out_roi).data), -1.0, 1.0))
    image("gt_syn_indicator", section(batch[keys.gt_indicator].data))
    if keys.pred_indicator in batch.arrays:
        image("pred_syn_indicator", section(batch[keys.pred_indicator].data))
    gt_len = np.linalg.norm(batch[keys.gt_vectors].data, axis=0)
    hi = float(gt_len.max()) or 1.0
    image("gt_partner_vector_length", scaled(section(gt_len), 0.0, hi))
    if keys.pred_vectors in batch.arrays:
        pred_len = np.linalg.norm(batch[keys.pred_vectors].data, axis=0)
        image("pred_partner_vector_length", scaled(section(pred_len), 0.0, hi))


def _log_scalars(losses: dict, trainer, rate: float, gpu: GpuMonitor, it: int):
    """Losses, learning rate, iterations/s and GPU state as TensorBoard scalars of step ``it``."""
    import tensorflow as tf

    for name, v in losses.items():
        tf.summary.scalar(f"loss/{name}", v, step=it)
    tf.summary.scalar("learning_rate", trainer.learning_rate, step=it)
    tf.summary.scalar("iterations_per_s", rate, step=it)
    for name, v in gpu.sample().items():
        tf.summary.scalar(name, v, step=it)
