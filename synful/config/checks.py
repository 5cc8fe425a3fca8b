"""Checks across keys: the [Evaluation] rules (ini, evaluation JSON and synful.evaluate.evaluate) and the
[Worker] strings that reach job scripts."""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from dataclasses import dataclass
from typing import Callable, Optional

from .keys import ConfigError
from .sections import Evaluation, Extraction, Worker


def uses_geodesic(settings) -> bool:
    """True when redundancy clustering measures along skeletons (``filter_redundant_dist_type = geodesic``)."""
    return settings.filter_redundant and settings.filter_redundant_dist_type == "geodesic"


@dataclass(frozen=True)
class CrossKeyRule:
    """One rule across [Evaluation] keys, written once for every place that checks it.

    ``broken(settings)`` is true when ``settings`` (an :class:`Evaluation`, or at a
    :func:`synful.evaluate.evaluate` call a copy holding its arguments: skeleton ids,
    skeletons, score thresholds) breaks the rule.  A config file's message is
    ``<source> <key>: <text>``; ``call`` is the message of :func:`synful.evaluate.evaluate`
    (None: not checked there), a format of ``key``, ``text``, ``where`` (the setting its
    errors name) and ``matching``.  ``text`` may name ``{matching}``.
    """

    key: str
    broken: Callable[[Evaluation], bool]
    text: str
    call: Optional[str] = None

    def message(self, settings) -> str:
        return self.text.format(matching=settings.matching)

    def call_message(self, settings, where: str) -> str:
        return self.call.format(key=self.key, text=self.message(settings), where=where, matching=settings.matching)


_SKELETON_FILES = "a folder of <skeleton_id>.swc / .json files, or one JSON node list"
_PER_NEURON_CALL = "only_input_synapses / only_output_synapses need skeleton_ids (they are per neuron)"

#: the [Evaluation] cross-key rules, in the order they are checked
EVALUATION_RULES = (
    CrossKeyRule("only_output_synapses", lambda s: s.only_input_synapses and s.only_output_synapses,
                 "only_input_synapses and only_output_synapses cannot both be true", call="{text}"),
    CrossKeyRule("matching_threshold_only_post",
                 lambda s: s.matching_threshold_only_pre and s.matching_threshold_only_post,
                 "matching_threshold_only_pre and matching_threshold_only_post cannot both be true (both false "
                 "matches on both sites)",
                 call="matching_threshold_only_pre and matching_threshold_only_post cannot both be true"),
    CrossKeyRule("score_thresholds", lambda s: s.score_thresholds is not None and not s.score_thresholds,
                 "give at least one score threshold (or None: derived from the scores)",
                 call="{key}: {text}"),
    CrossKeyRule("only_input_synapses", lambda s: s.only_input_synapses and s.skeleton_ids is None,
                 "needs skeleton_ids (inputs and outputs are per neuron)", call=_PER_NEURON_CALL),
    CrossKeyRule("only_output_synapses", lambda s: s.only_output_synapses and s.skeleton_ids is None,
                 "needs skeleton_ids (inputs and outputs are per neuron)", call=_PER_NEURON_CALL),
    CrossKeyRule("matching", lambda s: s.skeleton_ids is not None and s.matching != "skeleton",
                 "skeleton_ids (the FAFB per-neuron protocol) needs matching = skeleton, got {matching}",
                 call="{where}: {text}"),
    CrossKeyRule("matching_seg_container", lambda s: s.matching_seg_container is not None and s.matching != "segment",
                 "looks up segment ids for matching = segment, got matching = {matching}"),
    CrossKeyRule("filter_redundant_dist_type", lambda s: uses_geodesic(s) and s.skeleton_ids is None,
                 "geodesic measures along each evaluated neuron's skeleton and needs skeleton_ids (the FAFB "
                 "per-neuron protocol)", call="{key} = {text}"),
    CrossKeyRule("skeletons", lambda s: uses_geodesic(s) and s.skeletons is None,
                 f"filter_redundant_dist_type = geodesic needs skeleton files ({_SKELETON_FILES}); no CATMAID "
                 f"server is used",
                 call=f"{{key}}: filter_redundant_dist_type = geodesic needs skeleton files ({_SKELETON_FILES})"),
)


def check_evaluation(settings: Evaluation, source: str) -> Evaluation:
    """Cross-key checks of [Evaluation] (ini and evaluation JSON); ``source`` prefixes the message.

    Returns ``settings``; raises :class:`ConfigError` naming the key at fault.
    """
    for rule in EVALUATION_RULES:
        if rule.broken(settings):
            raise ConfigError(f"{source} {rule.key}: {rule.message(settings)}")
    return settings


#: Slurm syntax of the [Worker] strings that reach an sbatch script or a container command line
SLURM_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # partition, account
SLURM_MEM_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)B?", re.IGNORECASE)  # 25G, 500M, 1.5T, plain MB
SLURM_TIME_RE = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")  # MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]
SBATCH_OPTION_RE = re.compile(r"--([A-Za-z][A-Za-z0-9_-]*)(?:=(.+))?")  # long form only
_MOUNT_OPTIONS = ("ro", "rw")


def _control_character(text: str) -> str | None:
    """The first control or line/paragraph-separator character of ``text`` (``\\n``, ``\\r``, NUL, ...), or None."""
    return next((c for c in text if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)


def check_worker_section(settings: Worker, where: str = "[Worker]") -> Worker:
    """Refuse [Worker] strings that could change a generated job script or container command; return ``settings``.

    Every string (and list item) must be free of control characters: a newline in e.g. ``account``
    would end its ``#SBATCH`` line, and the next line of the script would run as a shell command.
    Each value must also have its Slurm / Singularity syntax: ``queue`` and ``account`` a name of
    letters, digits, ``_``, ``.``, ``-``; ``mem`` a positive size (``25G``, ``500M``, plain MB);
    ``time_limit`` a positive ``MM``, ``MM:SS``, ``HH:MM:SS`` or ``D-HH[:MM[:SS]]``; each
    ``sbatch_extra`` item ``--option`` or ``--option=value``; each ``mount_dirs`` item ``SRC``,
    ``SRC:DST`` or ``SRC:DST:ro|rw`` without ``,`` (Singularity reads a comma as a second bind) and
    with an absolute ``DST``.  ``where`` prefixes messages (``FILE [Worker]``); raises
    :class:`ConfigError` naming the key and showing the value (``repr``, so a newline is visible).
    Whether the partition, image and directories exist is checked before launching
    (:func:`synful.cluster.check_worker`), not here.
    """
    def fail(key_: str, value, why: str):
        raise ConfigError(f"{where} {key_}: {why}, got {value!r}")

    for f in dataclasses.fields(Worker):
        value = getattr(settings, f.name)
        for item in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(item, str) and (c := _control_character(item)) is not None:
                fail(f.name, item, f"control character {c!r} not allowed (it would break the job script line)")
    if not SLURM_NAME_RE.fullmatch(settings.queue):
        fail("queue", settings.queue, "expected a Slurm partition name (letters, digits, '_', '.', '-')")
    if settings.account is not None and not SLURM_NAME_RE.fullmatch(settings.account):
        fail("account", settings.account, "expected a Slurm account name (letters, digits, '_', '.', '-')")
    m = SLURM_MEM_RE.fullmatch(settings.mem.strip())
    if not m or float(m.group(1)) <= 0:
        fail("mem", settings.mem, "expected a positive size like 500M or 25G")
    m = SLURM_TIME_RE.fullmatch(settings.time_limit.strip())
    if not m or not any(int(g) for g in m.groups() if g is not None):
        fail("time_limit", settings.time_limit, "expected a positive MM, HH:MM:SS or D-HH:MM:SS")
    for item in settings.sbatch_extra:
        if not SBATCH_OPTION_RE.fullmatch(item.strip()):
            fail("sbatch_extra", item, "use the long form --option=value (e.g. --qos=high) or --flag")
    for item in settings.mount_dirs:
        parts = item.split(":")
        if (not parts[0] or len(parts) > 3 or "," in item or (len(parts) > 1 and not parts[1].startswith("/"))
                or (len(parts) == 3 and parts[2] not in _MOUNT_OPTIONS)):
            fail("mount_dirs", item, "expected SRC, SRC:DST or SRC:DST:ro|rw (DST absolute, no ',')")
    return settings


def check_extraction(settings: Extraction, where: str = "[Extraction]") -> Extraction:
    """Cross-key checks of [Extraction]; ``where`` prefixes the message (``FILE [Extraction]``).

    ``method = nms`` needs ``context`` of at least twice ``nms_radius`` per axis (a maximum near a block's
    edge is compared with everything within the radius).  Returns ``settings``; raises :class:`ConfigError`.
    """
    if settings.method == "nms" and any(c < 2 * r for c, r in zip(settings.context, settings.nms_radius)):
        raise ConfigError(f"{where} context: must be at least 2 x nms_radius per axis for method = nms, "
                          f"got {settings.context}")
    return settings
