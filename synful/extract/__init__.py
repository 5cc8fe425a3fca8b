"""Extraction: synaptic partners from the predicted indicator and partner vectors.

Two layers:

- :func:`find_partners` is the pure array function: indicator probabilities
  (z, y, x) and partner vectors in nm (3, z, y, x) of one block in, an array of
  :data:`~synful.io.partners.PARTNER_DTYPE` out.
- :func:`extract` runs it blockwise with daisy over a prediction run's zarr
  outputs and writes each block's partners into the run's result collection
  (:mod:`synful.store`).

Method (``[Extraction]`` of predict_config.ini):

1. candidates: ``cc`` thresholds the indicator (``p > cc_threshold``) and
   takes 26-connected components; ``nms`` takes the local maxima above the
   threshold within an ellipsoid of ``nms_radius`` nm (one per 26-connected
   plateau: the plateau's voxel nearest its centroid), each with the
   above-threshold voxels of that ellipsoid as its "component".
2. post site per component: ``edt`` the voxel farthest from the component's
   outside (Euclidean distance transform in nm, outside the block counts as
   outside) or ``max`` the indicator maximum; when several voxels tie, the one
   nearest the component's centroid (Euclidean, nm), then the first in
   (z, y, x) order.  Locations are voxel corners: ``offset + index * voxel_size``.
   Candidates are computed from the above-threshold voxels alone (no pass over
   the block besides the threshold); the results equal dense formulations (cc3d
   components, scipy's EDT of each padded bounding box, a maximum filter over
   the block; tests/test_extract_speed_rules.py).
3. score: ``sum``, ``mean``, ``max`` or ``count`` of the component's
   probabilities.
4. pre site: post site plus the partner vector at the post site (``point``)
   or the component's mean vector (``mean``), rounded to whole nm.
5. filters: ``score >= score_thr``, ``min_distance <= |pre - post| <=
   max_distance``; segment ids looked up at both sites when a segmentation is
   configured (NO_ID outside it), optionally dropping same-segment pairs.

``compat = synful`` reproduces the partners of Synful's original detection code
instead (6-connected components, the EDT on each component's bounding box,
pre sites snapped to the voxel grid, NMS plateaus at their centre of mass,
``score > score_thr``); README "Differences from Synful" says why the default
differs.

Stored values times the dataset's ``scale`` attribute are probabilities
(indicator) and nm (vectors); prediction writes it.  A dataset without it
needs ``[Extraction] indicator_scale`` / ``partner_vectors_scale``, otherwise
extraction refuses to start (a uint8 indicator would read as 0..255).

Partner ids are deterministic: the post site's voxel index, 21 bits per axis
(see :func:`partner_id`).  A partner belongs to the block whose write ROI
holds its post site; the read ROI adds ``context`` nm on every side so that a
component crossing a block border is seen whole by every block that sees it
(components touching the read ROI border are counted as truncated and
logged: raise ``context`` then).

Resuming, and what a run is (:func:`extract`):

- Done markers (``<predict_dir>/extract_tracking``) are only trusted with the
  *signature* they were made under (``extract_tracking/signature.json``): a hash
  of everything the partners depend on -- the prediction (the id of the
  finished ``synful predict`` run, or for outputs of another tool the shape,
  dtype, ROI and scale of its datasets), the extraction settings, the
  segmentation, the block layout, and the store and collection.  Paths inside
  the experiment count relative to the run directory, so a moved experiment
  resumes.  Any difference refuses to start, naming what changed; ``--overwrite``
  redoes the extraction.  A prediction that has not finished (no completed run
  metadata, or a newer run started since) is refused too.
- A run has an identity, a uuid created by its first extraction and kept in
  ``<predict_dir>/extraction_run.json`` (it survives ``--overwrite`` and moving
  the directory).  The collection records the run that owns it
  (:meth:`synful.store.Store.claim_run`, with the signature); a different run --
  another experiment with the same names writing to the same MongoDB -- is
  refused with both named, even with ``--overwrite``.  Markers whose collection
  lost its record (dropped by hand), and collections holding partners of an
  unknown run, are refused as well.

Modules: :mod:`.partners` (:func:`find_partners`), :mod:`.candidates` and :mod:`.sparse` (candidates of
``compat = none``), :mod:`.compat` (``compat = synful``), :mod:`.blockwise` (:func:`extract`, the daisy
driver), :mod:`.run` (a run's opened inputs), :mod:`.signature` (signature and run identity),
:mod:`.common` (error, file names, partner ids).
"""

from .blockwise import extract, process_block, run_worker, summarize
from .common import (HISTOGRAM_FILE, RUN_FILE, SIGNATURE_FILE, SUMMARY_FILE, TASK_ID, TRACKING_DIR,
                     ExtractionError, partner_id)
from .partners import find_partners

__all__ = [
    "ExtractionError",
    "find_partners",
    "partner_id",
    "extract",
    "process_block",
    "run_worker",
    "summarize",
]
