"""The progress bar of a prediction run."""

from __future__ import annotations

import datetime as _dt
import time


# daisy's own bar (``progress=True``) shows block counts only, with no voxels/s or ETA, and its observer class is
# private: we keep ours, an observer of the same protocol (on_start / on_progress / on_finish)
class ProgressBar:
    """daisy progress observer: one bar with blocks done, voxels/s and ETA of the blocks still to do."""

    def __init__(self, task_id: str, voxels_per_block: float, enabled: bool = True):
        self.task_id, self.vpb, self.enabled = task_id, voxels_per_block, enabled
        self.bar, self.t0, self.last = None, None, None

    def _update(self, states, final=False):
        s = states.get(self.task_id)
        if s is None:
            return
        self.last = s
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=int(s.total_block_count), unit="block", dynamic_ncols=True, desc="predict",
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} blocks "
                                       "[{elapsed}{postfix}]")
        done = int(s.completed_count)
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)
        processed = done - int(s.skipped_count)
        if self.t0 is None:
            self.t0 = time.time()
        parts = []
        if processed > 0:
            # since the run started, worker start-up included: the rate a user can plan with
            elapsed = max(time.time() - self.t0, 1e-6)
            left = int(s.total_block_count) - done
            parts += [f"{processed * self.vpb / elapsed / 1e6:.3g} Mvoxel/s",
                      f"ETA {_dt.timedelta(seconds=int(left * elapsed / processed))}"]
        if int(s.failed_count):
            parts.append(f"{int(s.failed_count)} failed")
        self.bar.set_postfix_str(", ".join(parts), refresh=final)

    def on_start(self, states):
        self.t0 = time.time()
        self._update(states)

    def on_progress(self, states):
        self._update(states)

    def on_finish(self, states):
        self._update(states, final=True)
        if self.bar is not None:
            self.bar.close()
