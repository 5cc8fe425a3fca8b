"""The signature of an extraction (what its partners depend on) and the run's identity (see the package
docstring: resuming, and what a run is)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import uuid
from pathlib import Path

import numpy as np

from ..errors import SynfulError
from .common import RUN_FILE, SIGNATURE_FILE, TRACKING_DIR, ExtractionError, _now, _read_json, _write_json

#: [Extraction] keys the signature takes from elsewhere (the store, the segmentation, the effective scales)
_NOT_SETTINGS = ("store_url", "database", "collection", "credentials_file", "credentials_env", "seg_container",
                 "seg_dataset", "indicator_scale", "partner_vectors_scale")
_LABELS = {"prediction": "prediction", "inputs": "prediction dataset", "extraction": "[Extraction]",
           "segmentation": "segmentation", "store": "store", "layout": "block layout"}


def _canonical(data):
    """``data`` as it reads back from JSON (tuples become lists), so stored and fresh values compare equal."""
    return json.loads(json.dumps(data, sort_keys=True, default=str))


def _hash(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _changes(old: dict, new: dict, limit: int = 6) -> list[str]:
    """``label key: old -> new`` for each leaf that differs between two signatures' parts."""
    out: list[str] = []
    missing = object()

    def fmt(v) -> str:
        return "(none)" if v is missing else json.dumps(v)

    def walk(a, b, key):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k, missing), b.get(k, missing), key + [k])
        elif a != b:
            label = _LABELS.get(key[0], key[0]) + (" " + ".".join(key[1:]) if len(key) > 1 else "")
            out.append(f"{label}: {fmt(a)} -> {fmt(b)}")

    walk(old, new, [])
    return out[:limit] + ([f"and {len(out) - limit} more"] if len(out) > limit else [])


def _experiment_root(predict_dir: Path) -> Path:
    from ..scaffold import run_ids

    try:
        run_ids(predict_dir)
    except SynfulError:  # a run directory outside the experiment layout
        return predict_dir
    return predict_dir.parents[1]


def _portable(path, predict_dir: Path) -> str:
    """``path`` relative to the run directory when it lies inside the run's experiment, else absolute.

    So the signature of a moved (or copied) experiment stays the same, while data outside it keeps its place.
    """
    path = Path(path).resolve()
    try:
        path.relative_to(_experiment_root(predict_dir))
    except ValueError:
        return str(path)
    return os.path.relpath(path, predict_dir)


def _array_description(array) -> dict:
    return {"shape": list(array.shape), "dtype": str(np.dtype(array.dtype)),
            "roi": [list(array.roi.offset), list(array.roi.shape)], "voxel_size": list(array.voxel_size)}


def _run_name(predict_dir: Path) -> str:
    from ..scaffold import run_ids

    try:
        return run_ids(predict_dir).name
    except SynfulError:
        return predict_dir.name


def _prediction_identity(predict_dir: Path, out_container) -> dict:
    """The finished ``synful predict`` run that wrote the outputs; ``{"source": "external"}`` for another tool's.

    ``synful predict`` writes ``<predict_dir>/blocks/predict_<run>.signature.json`` (with the run's id) when
    it starts and ``<run>_prediction.json`` beside the output container when it ends (``complete``, the
    same id).  Raises :class:`ExtractionError` when the prediction has not finished: no metadata yet,
    metadata saying incomplete, or a newer run (``--overwrite``, a resumed run) started after it.
    """
    name = _run_name(predict_dir)
    started_path = predict_dir / "blocks" / f"predict_{name}.signature.json"
    meta_path = Path(out_container).parent / f"{name}_prediction.json"
    started = _read_json(started_path, "prediction signature") if started_path.is_file() else None
    meta = _read_json(meta_path, "prediction metadata") if meta_path.is_file() else None
    if started is None and meta is None:
        return {"source": "external"}
    finish = f"finish it with `synful predict {predict_dir}` before extracting"
    if meta is None or not meta.get("complete"):
        if meta is None:
            state = f"has started ({started_path}) but not finished ({meta_path} does not exist)"
        else:
            b = meta.get("blocks") or {}
            done = int(b.get("processed", 0) or 0) + int(b.get("skipped", 0) or 0)
            state = f"did not finish ({meta_path}: complete = false, {done} of {b.get('total', '?')} blocks)"
        raise ExtractionError(f"the prediction of {predict_dir} {state}; {finish} (partners of a partial "
                              f"prediction would later pass for complete ones)")
    run_id = meta.get("run_id")
    if started is not None and started.get("run_id") and started.get("run_id") != run_id:
        raise ExtractionError(f"{started_path}: prediction run {started['run_id']} started after the finished run "
                              f"{run_id or '(without id)'} of {meta_path} and has not finished (a `synful predict "
                              f"--overwrite` running or killed?); {finish}")
    if run_id:
        return {"source": "synful predict", "run_id": run_id, "signature": meta.get("signature")}
    # metadata of an older synful, without run ids: its times identify the run
    return {"source": "synful predict", "start": meta.get("start"), "end": meta.get("end")}


def _signature_parts(run: "_Run") -> dict:
    from ..config import to_dict

    cfg, p, d = run.cfg, run.prediction, run.predict_dir
    total, read_roi, write_roi = run.block_geometry()
    store = dict(run.store.identity())
    if store.get("backend") == "sqlite":
        store["path"] = _portable(store["path"], d)
    seg = None
    if run.segmentation is not None:
        seg = {"container": _portable(cfg.seg_container, d), "dataset": cfg.seg_dataset,
               **_array_description(run.segmentation)}
    parts = {
        "prediction": _prediction_identity(d, p.out_container),
        "inputs": {"container": _portable(p.out_container, d),
                   "indicator": {"dataset": p.indicator_dataset, "scale": run.indicator_scale,
                                 **_array_description(run.indicator)},
                   "vectors": {"dataset": p.vectors_dataset, "scale": run.vectors_scale,
                               **_array_description(run.vectors)}},
        "extraction": {k: v for k, v in to_dict(cfg).items() if k not in _NOT_SETTINGS},
        "segmentation": seg,
        "store": store,
        "layout": {"total_roi": [list(total.offset), list(total.shape)],
                   "read_roi": [list(read_roi.offset), list(read_roi.shape)],
                   "write_roi": [list(write_roi.offset), list(write_roi.shape)]},
    }
    mask = run.tissue_mask()
    if mask is not None:  # only then, so extractions without a mask keep their signature
        parts["tissue_mask"] = {"container": _portable(mask.container, d), "dataset": mask.dataset,
                                "sha256": mask.digest()}
    return parts


def _check_and_claim(run: "_Run", overwrite: bool) -> dict:
    """Refuse what a rerun must not resume (:mod:`synful.extract`); then own the collection and write the signature.

    Order matters for a kill at any point: markers go before partners, the record and the signature are
    written before any block runs.  Returns the run record stored with the collection.
    """
    d = run.predict_dir
    store = run.store
    where = f"{_redact(store.name)} [{store.collection}]"
    tracking = d / TRACKING_DIR
    sig_path = tracking / SIGNATURE_FILE
    parts = run.signature_parts()
    sig = _hash(parts)
    run_file = d / RUN_FILE
    mine = _read_json(run_file, "extraction run identity") if run_file.is_file() else \
        {"run_id": uuid.uuid4().hex, "created": _now()}
    rid = str(mine.get("run_id") or "")
    if not rid:
        raise ExtractionError(f"{run_file}: no run_id (delete the file to give this run a new identity)")

    record = store.run_record()
    _refuse_other_run(record, rid, d, where)
    if not overwrite:
        _refuse_stale(store, record, sig, parts, d, where)
    else:
        shutil.rmtree(tracking, ignore_errors=True)  # markers first: a kill in between leaves nothing marked done
        if tracking.exists():
            raise ExtractionError(f"{tracking}: cannot delete the done markers")
        store.drop()
    if not run_file.is_file():
        _write_json(run_file, mine)
    store.create()
    new = {"run_id": rid, "run": _run_name(d), "predict_dir": str(d), "host": socket.gethostname(),
           "created": (record or {}).get("created") or mine.get("created") or _now(), "updated": _now(),
           "signature": sig, "inputs": parts}
    before = store.claim_run(new)
    if before is not None and before.get("run_id") != rid:  # another run claimed it meanwhile
        raise ExtractionError(f"{where} was just claimed by another extraction run {before.get('run_id')} "
                              f"({before.get('predict_dir')}); this run is {rid} ({d}); set [Extraction] collection")
    tracking.mkdir(parents=True, exist_ok=True)
    _write_json(sig_path, {"signature": sig, "run_id": rid, "parts": parts})
    return new


def _refuse_other_run(record, rid: str, d: Path, where: str) -> None:
    """Refuse a collection that another extraction run (``record``) owns, or that a copy of this run wrote."""
    if record is not None and record.get("run_id") != rid:
        raise ExtractionError(
            f"{where} belongs to another extraction run: {record.get('run_id')} ({record.get('predict_dir')} on "
            f"{record.get('host')}, since {record.get('created')}); this run is {rid} ({d}). Set [Extraction] "
            f"collection in {d / 'predict_config.ini'} to a name of its own, or drop that collection if its "
            f"partners are not wanted (--overwrite only ever replaces this run's own partners)")
    if record is not None and record.get("predict_dir") not in (None, str(d)) \
            and record.get("host") == socket.gethostname():
        other = Path(record["predict_dir"]) / RUN_FILE
        if other.is_file() and _read_json(other, "extraction run identity").get("run_id") == rid:
            raise ExtractionError(
                f"{d} and {record['predict_dir']} both carry extraction run {rid} (a copied experiment?) and "
                f"{where} holds the partners of the latter; set [Extraction] collection in "
                f"{d / 'predict_config.ini'} to a name of its own")


def _refuse_stale(store, record, sig: str, parts: dict, d: Path, where: str) -> None:
    """Without --overwrite: refuse markers or partners made from other inputs, markers without a signature or
    without a collection record, and a collection of partners without a record."""
    tracking = d / TRACKING_DIR
    sig_path = tracking / SIGNATURE_FILE
    tracked = tracking.is_dir() and any(tracking.iterdir())
    redo = "pass --overwrite to redo the extraction (it drops the collection's partners and the done markers)"
    if sig_path.is_file():
        old = _read_json(sig_path, "extraction signature")
        if old.get("signature") != sig:
            changes = _changes(old.get("parts") or {}, parts) or ["the signature differs"]
            raise ExtractionError(f"{sig_path}: the done markers of {d} were made from other inputs: "
                                  f"{'; '.join(changes)}; {redo}")
    elif tracked:
        raise ExtractionError(f"{tracking}: done markers without a signature (made by an older synful), so "
                              f"what they were computed from is unknown; {redo}")
    if record is not None and record.get("signature") != sig:
        changes = _changes(record.get("inputs") or {}, parts) or ["the signature differs"]
        raise ExtractionError(f"{where} holds partners of this run extracted from other inputs: "
                              f"{'; '.join(changes)}; {redo}")
    if record is None:
        n = store.count()
        if n:
            raise ExtractionError(f"{where} holds {n} partners but no record of the run that wrote them (an "
                                  f"older synful or another tool); pass --overwrite to replace them")
        if tracked:
            raise ExtractionError(f"{tracking}: done markers exist but {where} has no record of this run (the "
                                  f"collection was dropped or emptied since?), so resuming would skip blocks "
                                  f"whose partners are gone; {redo}")


def _redact(url: str) -> str:
    from ..store import redact_url

    return redact_url(url)
