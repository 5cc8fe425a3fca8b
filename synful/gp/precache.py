"""Seeded batches: a PreCache whose worker processes each build a different batch, a Reject whose retries differ."""

from __future__ import annotations

import multiprocessing

import numpy as np
from gunpowder import PreCache, Reject

__all__ = ["SeededPreCache", "SeededReject", "batch_seed", "seeded_request"]


def batch_seed(seed: int, index: int) -> int:
    """The gunpowder random seed (uint32) of batch number ``index`` of a run seeded with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def seeded_request(request, seed: int, index: int):
    """A copy of the gunpowder ``request`` that draws batch number ``index`` of a run seeded with ``seed``."""
    out = request.copy()
    out._random_seed = batch_seed(seed, index)  # gunpowder has no public setter
    return out


class SeededPreCache(PreCache):
    """Pre-cache batches in worker processes, every batch drawn with its own random seed.

    gunpowder's PreCache hands each worker a copy of one stored request: a request that carries a
    ``random_seed`` then yields the same batch from every worker, again and again, and one without a
    seed draws from the clock.  Here batch ``n`` (counted over all workers through shared memory) is
    requested with seed :func:`batch_seed` ``(seed, n)``: the batches differ, and a run draws the same
    set of batches for the same ``seed`` (their order depends on worker timing).

    Args:
        seed: base seed of the run.
        first: index of the first batch (a resumed run passes its start iteration, so it does not
            repeat the batches it already trained on).
        cache_size, num_workers: as for gunpowder's PreCache.
    """

    def __init__(self, seed: int, first: int = 0, cache_size: int = 50, num_workers: int = 20):
        super().__init__(cache_size=cache_size, num_workers=num_workers)
        self.seed = int(seed)
        # created before the workers fork, so all of them count on the same value
        self._counter = multiprocessing.Value("q", int(first))

    def _run_worker(self):
        with self._counter.get_lock():
            index = self._counter.value
            self._counter.value += 1
        return self.get_upstream_provider().request_batch(seeded_request(self.current_request, self.seed, index))


class _FreshSeedOnRetry:
    """Stands in for Reject's upstream provider: a repeated request gets a new seed each time."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.last, self.retry = None, 0

    def request_batch(self, request):
        if request is not self.last:
            self.last, self.retry = request, 0
            return self.upstream.request_batch(request)
        self.retry += 1
        if not request.is_deterministic():
            return self.upstream.request_batch(request)
        return self.upstream.request_batch(seeded_request(request, request.random_seed, self.retry))


class SeededReject(Reject):
    """gunpowder's Reject for seeded requests: each retry draws a new batch.

    Reject asks upstream again with the same request; a seeded request then rebuilds the same rejected
    batch, and the same accept/reject draw, forever.  Here retry ``k`` of a request with seed ``s`` is
    drawn with seed :func:`batch_seed` ``(s, k)``, so retries differ and stay reproducible.  Takes
    Reject's arguments.
    """

    def setup(self):
        super().setup()
        # Reject keeps its upstream provider in this attribute and calls it once per try
        self.upstream_provider = _FreshSeedOnRetry(self.upstream_provider)
