"""The cluster layer's errors and its one logger."""

from __future__ import annotations

import logging

from ..config import ConfigError, Worker, check_worker_section
from ..errors import SynfulError

#: every module of the package logs as ``synful.cluster``, the logger name it always had
logger = logging.getLogger("synful.cluster")


class ClusterError(SynfulError):
    """A worker config, container, mount, partition or job cannot be used; the message names it."""


class SchedulerLost(ClusterError):
    """A blockwise worker (or the slot waiting for it) lost the daisy scheduler of its run: no block will come."""


def check_section(worker_cfg: Worker, where: str = "[Worker]") -> Worker:
    """:func:`synful.config.check_worker_section`, its :class:`ConfigError` raised as :class:`ClusterError`."""
    try:
        return check_worker_section(worker_cfg, where)
    except ConfigError as e:
        raise ClusterError(str(e)) from None
