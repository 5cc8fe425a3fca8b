"""Train / validation / test splits of the labelled synapses, stratified by transmitter.

A synapse's class is its skeleton's transmitter: a skeleton with exactly one
known transmitter in ``synapse_types`` labels all its synapses with it; with
``neither_class`` a skeleton whose single known transmitter is not in
``synapse_types`` labels them ``"neither"``; skeletons with no or several
known transmitters leave their synapses out of every split.

Three kinds of split:

- ``random``: per class, synapses are shuffled and cut by the fractions.
- ``skeleton``: whole skeletons go to one part (a skeleton never appears in
  two parts): per class, skeletons in seeded random order each go to the part
  furthest below its fraction of that class's synapses.
- ``hemilineage``: the same over hemilineages (a hemilineage never appears in
  two parts); a hemilineage is stratified by the class of most of its
  synapses; a skeleton without hemilineage is a group of its own.

Everything is a function of the inputs and ``seed`` (inputs are sorted by id
first), so a split is reproducible.  Stored splits live in ``<db>.splits``
(``split``, ``synapse_id``, ``part``) with their parameters in
``<db>.split_info``.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import SynfulError
from .db import SKELETONS, SPLITS, SYNAPSES, DocumentStore, StoreError

__all__ = [
    "SplitError",
    "PARTS",
    "SPLIT_KINDS",
    "NEITHER",
    "class_names",
    "synapse_labels",
    "make_split",
    "check_split",
    "create_split",
    "read_split",
    "split_synapses",
]

PARTS = ("train", "validation", "test")
SPLIT_KINDS = ("random", "skeleton", "hemilineage")
NEITHER = "neither"
SPLIT_INFO = "split_info"
#: a part whose synapse count is off its requested count by more than this share of it (and by more than
#: 2 synapses) is warned about: group splits fill parts in whole skeletons / hemilineages, so smaller
#: deviations are expected
FRACTION_TOLERANCE = 0.5

logger = logging.getLogger(__name__)


class SplitError(SynfulError):
    """A split cannot be made or read (bad fractions, unknown kind or name, no labelled synapses)."""


def class_names(synapse_types, neither_class: bool = False) -> list[str]:
    """The network's output classes, in order: ``synapse_types`` (lower case), then ``neither`` if enabled."""
    names = [t.lower() for t in synapse_types]
    if len(set(names)) != len(names):
        raise SplitError(f"synapse_types {list(synapse_types)}: names must be unique")
    return names + ([NEITHER] if neither_class else [])


def synapse_labels(synapses: list[dict], skeletons: list[dict], synapse_types, neither_class: bool = False
                   ) -> dict[int, str]:
    """``{synapse_id: class name}`` for every synapse whose skeleton has one usable transmitter."""
    types = {t.lower() for t in synapse_types}
    skel_class = {}
    for s in skeletons:
        nts = sorted(set(s.get("nt_known") or []))
        if len(nts) != 1:
            continue
        if nts[0] in types:
            skel_class[s["skeleton_id"]] = nts[0]
        elif neither_class:
            skel_class[s["skeleton_id"]] = NEITHER
    return {syn["synapse_id"]: skel_class[syn["skeleton_id"]] for syn in synapses if syn["skeleton_id"] in skel_class}


@dataclass(frozen=True)
class SplitInfo:
    """Parameters and part sizes of a stored split."""

    split: str
    kind: str
    fractions: tuple
    seed: int
    synapse_types: tuple
    neither_class: bool
    counts: dict  # {part: {class: synapses}}


def _check_fractions(fractions):
    f = tuple(float(x) for x in fractions)
    if len(f) != 3 or any(x < 0 for x in f) or not abs(sum(f) - 1.0) < 1e-6:
        raise SplitError(f"fractions {list(fractions)}: give three fractions (train, validation, test) >= 0 summing to 1")
    return f


def _cut(n: int, fractions) -> list[int]:
    """Part sizes for n items: rounded cumulative fractions (sums to n)."""
    bounds = [0] + [int(round(n * sum(fractions[:i + 1]))) for i in range(len(fractions))]
    bounds[-1] = n
    return [bounds[i + 1] - bounds[i] for i in range(len(fractions))]


def _groups(synapses: list[dict], skeletons: list[dict], kind: str) -> dict[tuple, list[int]]:
    """``{group: synapse ids}``: what a split of ``kind`` keeps together.  A group is
    ``("skeleton", id)`` or ``("hemilineage", id)`` (a skeleton without hemilineage is its own
    group); a random split's groups are single synapses."""
    hl = {s["skeleton_id"]: s.get("hemi_lineage_id") for s in skeletons}
    members: dict[tuple, list[int]] = defaultdict(list)
    for s in synapses:
        if kind == "random":
            group = ("synapse", s["synapse_id"])
        elif kind == "skeleton":
            group = ("skeleton", s["skeleton_id"])
        else:
            h = hl.get(s["skeleton_id"])
            group = ("hemilineage", h) if h is not None else ("skeleton", s["skeleton_id"])
        members[group].append(s["synapse_id"])
    return members


def check_split(name: str, kind: str, parts: dict[int, str], fractions, groups: dict[tuple, list[int]],
                labels: dict[int, str]) -> list[str]:
    """Compare the realised part sizes of a split with the requested ``fractions``.

    A part with a fraction > 0 that got no synapse is a SplitError (a split without, say, test
    synapses cannot be evaluated, and the cause -- too few skeletons or hemilineages to deal out --
    is only visible here).  Returns warnings, one line each, for a part whose synapse count is off
    the requested count by more than ``FRACTION_TOLERANCE`` of it (and 2 synapses), and for classes
    missing from a part with a fraction > 0; the caller logs them.
    """
    total = len(parts)
    got = Counter(parts.values())
    part_groups = {p: sum(1 for ids in groups.values() if parts.get(ids[0]) == p) for p in PARTS}
    unit = {"random": "synapses", "skeleton": "skeletons",
            "hemilineage": "hemilineages (or skeletons without one)"}[kind]
    summary = ", ".join(f"{p} {got[p]} (requested {f * total:.0f})" for p, f in zip(PARTS, fractions))
    for p, f in zip(PARTS, fractions):
        if f > 0 and got[p] == 0:
            raise SplitError(f"split {name!r} ({kind}): part {p!r} got 0 synapses, {f * total:.0f} of {total} "
                             f"requested (fraction {f:g}): the {len(groups)} {unit} of {len(set(labels.values()))} "
                             f"classes are too few to fill every part (synapses per part: {summary}); use "
                             f"--kind skeleton or random, other --fractions (0 for a part you do not want), or more "
                             f"data; nothing stored")
    warnings = []
    for p, f in zip(PARTS, fractions):
        want = f * total
        if abs(got[p] - want) > max(2.0, FRACTION_TOLERANCE * want):
            warnings.append(f"split {name!r} ({kind}): part {p!r} got {got[p]} synapses ({part_groups[p]} of "
                            f"{len(groups)} {unit}), {want:.0f} requested (fraction {f:g} of {total}); "
                            f"synapses per part: {summary}")
    classes = sorted(set(labels.values()))
    for p, f in zip(PARTS, fractions):
        present = {labels[i] for i, q in parts.items() if q == p}
        missing = [c for c in classes if c not in present]
        if f > 0 and missing:
            warnings.append(f"split {name!r} ({kind}): part {p!r} has no synapses of class(es) {', '.join(missing)}")
    return warnings


def make_split(synapses: list[dict], skeletons: list[dict], *, kind: str = "skeleton", fractions=(0.8, 0.1, 0.1),
               seed: int = 0, synapse_types=("gaba", "acetylcholine", "glutamate", "serotonin", "octopamine",
                                             "dopamine"), neither_class: bool = False) -> dict[int, str]:
    """``{synapse_id: part}`` over the labelled synapses (see the module doc for the three kinds)."""
    if kind not in SPLIT_KINDS:
        raise SplitError(f"split kind {kind!r}: expected one of {', '.join(SPLIT_KINDS)}")
    fractions = _check_fractions(fractions)
    labels = synapse_labels(synapses, skeletons, synapse_types, neither_class)
    if not labels:
        raise SplitError("no synapse has a skeleton with exactly one known transmitter in synapse_types")
    rng = np.random.default_rng(seed)
    by_class: dict[str, list] = defaultdict(list)
    synapses = sorted((s for s in synapses if s["synapse_id"] in labels), key=lambda s: s["synapse_id"])
    parts: dict[int, str] = {}

    if kind == "random":
        for s in synapses:
            by_class[labels[s["synapse_id"]]].append(s["synapse_id"])
        for cls in sorted(by_class):
            ids = np.array(by_class[cls])[rng.permutation(len(by_class[cls]))]
            start = 0
            for part, size in zip(PARTS, _cut(len(ids), fractions)):
                parts.update((int(i), part) for i in ids[start:start + size])
                start += size
        return parts

    members = _groups(synapses, skeletons, kind)
    group_class = {}
    for g, ids in members.items():
        counts = Counter(labels[i] for i in ids)
        group_class[g] = min(counts, key=lambda c: (-counts[c], c))  # majority, ties by name
    for g in sorted(members, key=str):
        by_class[group_class[g]].append(g)
    for cls in sorted(by_class):
        groups = [by_class[cls][i] for i in rng.permutation(len(by_class[cls]))]
        total = sum(len(members[g]) for g in groups)
        target = [f * total for f in fractions]
        filled = [0, 0, 0]
        for g in groups:
            # the part furthest below its target (relative), among parts that want synapses
            open_parts = [p for p in range(3) if fractions[p] > 0]
            p = max(open_parts, key=lambda p: ((target[p] - filled[p]) / target[p], -p))
            filled[p] += len(members[g])
            parts.update((i, PARTS[p]) for i in members[g])
    return parts


def create_split(store: DocumentStore, database: str, name: str, *, kind: str = "skeleton",
                 fractions=(0.8, 0.1, 0.1), seed: int = 0, synapse_types=None, neither_class: bool = False,
                 overwrite: bool = False) -> SplitInfo:
    """Make a split of ``<db>.synapses`` and store it under ``name``; refuse an existing name unless ``overwrite``.

    Before storing, :func:`check_split` refuses a split with an empty part whose fraction is > 0 and
    logs a warning for each part far off its requested size.
    """
    from ..config import SYNAPSE_TYPES

    synapse_types = tuple(t.lower() for t in (synapse_types or SYNAPSE_TYPES))
    class_names(synapse_types, neither_class)
    splits, info = store.collection(database, SPLITS), store.collection(database, SPLIT_INFO)
    if not overwrite and info.count({"split": name}):
        raise StoreError(f"{store.url} {database}.{SPLITS}: split {name!r} exists (use --overwrite to replace it)")
    synapses = store.collection(database, SYNAPSES).find()
    skeletons = store.collection(database, SKELETONS).find()
    if not synapses:
        raise SplitError(f"{store.url} {database}.{SYNAPSES}: no synapses (import them first)")
    parts = make_split(synapses, skeletons, kind=kind, fractions=fractions, seed=seed, synapse_types=synapse_types,
                       neither_class=neither_class)
    labels = synapse_labels(synapses, skeletons, synapse_types, neither_class)
    labelled = [syn for syn in synapses if syn["synapse_id"] in labels]
    for warning in check_split(name, kind, parts, _check_fractions(fractions), _groups(labelled, skeletons, kind),
                               labels):
        logger.warning("%s", warning)
    counts = {p: {} for p in PARTS}
    for sid, part in parts.items():
        counts[part][labels[sid]] = counts[part].get(labels[sid], 0) + 1
    result = SplitInfo(split=name, kind=kind, fractions=tuple(float(f) for f in fractions), seed=int(seed),
                       synapse_types=synapse_types, neither_class=bool(neither_class), counts=counts)
    doc = asdict(result)
    doc.update(fractions=list(result.fractions), synapse_types=list(synapse_types), neither_class=int(neither_class))
    with store.transaction():
        splits.create_index("split")
        splits.delete_many({"split": name})
        info.delete_many({"split": name})
        splits.insert_many({"split": name, "synapse_id": int(sid), "part": part}
                           for sid, part in sorted(parts.items()))
        info.insert_many([doc])  # written last: a split without info is incomplete and ignored
    return result


def read_split(store: DocumentStore, database: str, name: str) -> tuple[SplitInfo, dict[int, str]]:
    """The stored split ``name``: its info and ``{synapse_id: part}``."""
    docs = store.collection(database, SPLIT_INFO).find({"split": name})
    if not docs:
        if not store.exists(database, SYNAPSES):
            raise SplitError(f"{store.url} {database}.{SYNAPSES}: no synapses (run `synful transmitter import` into "
                             f"this store first, then `synful transmitter split --name {name}`)")
        known = sorted({d["split"] for d in store.collection(database, SPLIT_INFO).find()})
        raise SplitError(f"{store.url} {database}: no split named {name!r} (known: {', '.join(known) or 'none'}; "
                         f"make it with `synful transmitter split --name {name}`)")
    d = docs[-1]
    info = SplitInfo(split=d["split"], kind=d["kind"], fractions=tuple(d["fractions"]), seed=d["seed"],
                     synapse_types=tuple(d["synapse_types"]), neither_class=bool(d["neither_class"]),
                     counts=d["counts"])
    parts = {doc["synapse_id"]: doc["part"] for doc in store.collection(database, SPLITS).find({"split": name})}
    return info, parts


def split_synapses(store: DocumentStore, database: str, name: str, part: str, *, synapse_types=None,
                   neither_class: bool | None = None) -> list[dict]:
    """Synapse documents of one part of a stored split, each with its ``label`` (class name) and ``skeleton_id``.

    ``synapse_types`` / ``neither_class`` default to the split's own; synapses
    whose class is not among them are left out.  Sorted by synapse id.
    """
    if part not in PARTS:
        raise SplitError(f"split part {part!r}: expected one of {', '.join(PARTS)}")
    info, parts = read_split(store, database, name)
    synapse_types = synapse_types or info.synapse_types
    neither_class = info.neither_class if neither_class is None else neither_class
    wanted = {sid for sid, p in parts.items() if p == part}
    synapses = [s for s in store.collection(database, SYNAPSES).find() if s["synapse_id"] in wanted]
    labels = synapse_labels(synapses, store.collection(database, SKELETONS).find(), synapse_types, neither_class)
    out = [dict(s, label=labels[s["synapse_id"]]) for s in synapses if s["synapse_id"] in labels]
    return sorted(out, key=lambda s: s["synapse_id"])
