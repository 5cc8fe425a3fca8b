"""Evaluation: the synaptic-partner f-score (CREMI / Synful metric, FAFB benchmark protocol).

Partners are :data:`~synful.io.partners.PARTNER_DTYPE` arrays (locations in nm,
(z, y, x); missing ids are ``NO_ID``).  Settings are one
:class:`synful.config.Evaluation` (the ``[Evaluation]`` section of
predict_config.ini, or the evaluation JSON read by
:func:`read_evaluation_json`; both share that one typed definition).

Filters on predictions, in this order (:func:`filter_partners`):

1. ``filter_seg_ids``: drop partners whose pre or post *segment* id is listed
   (a missing id never matches);
2. keep ``score >= score_thr``;
3. ``filter_same_id``: drop partners whose pre id equals their post id
   (``filter_same_id_type``: seg or skel; two missing ids are not "the same");
4. ``filter_redundant``: within each (pre id, post id) group
   (``filter_redundant_id_type``) single-linkage clusters of post sites with
   ``0 < d <= filter_redundant_dist_thr`` (nm; d exactly 0 does not link) keep
   only their highest-scoring member, the first in input order on a tie.
   ``filter_redundant_dist_type``: d is the euclidean post-site distance
   (default) or, ``geodesic``, the path length along the evaluated neuron's
   skeleton (FAFB protocol only; skeletons read from the files ``skeletons``
   names, see :func:`evaluate`) between the nodes nearest to the post sites.
   Partners with a missing id, or with an id in
   ``filter_redundant_ignore_ids``, are never clustered.

Score thresholds: ``score_thresholds`` lists them; None (the default) derives
them from the data (:func:`auto_score_thresholds` of the scores filters 1 and
3 leave), since the score scale depends on the extraction's score type.  Every
result counts the predictions each filter removed (``removed``) and, where
none is left, says why (``note``, also logged as a warning); the
precision-recall plot then writes that note instead of drawing a point.

Matching (:func:`match_partners`): a prediction and a ground-truth partner are
a feasible pair only if their (pre id, post id) pairs are equal with no id
missing (when matching by ids) and their distance is within
``matching_threshold`` (nm): the pre-site distance
(``matching_threshold_only_pre``), the post-site distance
(``matching_threshold_only_post``) or both distances (cost: their mean).
Predictions in a pair without ground truth are thus false positives and ground
truth in a pair without predictions false negatives.  Within a shared pair the
one-to-one assignment minimises the summed cost of a square matrix whose
infeasible and padding cells cost ``2 x matching_threshold``
(scipy.optimize.linear_sum_assignment); assigned feasible cells are true
positives.  Because infeasible and padding cells share one cost, that
assignment splits exactly over the connected components of the feasible
graph: a component with one prediction or one ground-truth partner yields one
true positive directly, larger ones are solved as their own padded square
matrix.  (With ``matching_threshold`` 0 infeasible cells cost 1 nm, so that
they still cost more than feasible ones.)

Which ids must match is the ``matching`` setting, never the data:
``location`` (default: no ids, plain Hungarian matching on distances),
``segment`` (``pre_seg_id`` and ``post_seg_id``) or ``skeleton``
(``pre_skel_id`` and ``post_skel_id``; required by ``skeleton_ids``).  Inputs
that lack those ids are an error (:func:`check_inputs`): a side on which no
partner carries both ids.  Partners of which only some lack them cannot match
(false positives, or false negatives on the ground-truth side); their counts
are in the results.  Segment ids are only comparable when both sides come
from one segmentation: :func:`evaluate_run` checks the ground truth's ids
against the run's ``[Extraction] seg_container`` and records where each
side's ids came from.  Every result records ``matching``.

Inputs are refused when a score is not finite, an id repeats or two records
share both sites (:func:`synful.io.partners.check_partners`).

FAFB benchmark protocol (:func:`evaluate` with ``skeleton_ids``): for each
neuron, the predictions and ground truth touching it (pre or post skeleton id;
only its inputs with ``only_input_synapses``: post skeleton id; only its
outputs with ``only_output_synapses``: pre skeleton id) are filtered and
matched on their own; tp, fp, fn, predcount and gtcount are summed over
neurons, so a link between two listed neurons counts under each of them.
Precision, recall and f-score come from the sums (0 where undefined).

Segment matching with a segmentation of one's own: predictions extracted
with a segmentation other than the ground truth's (e.g. the watershed of
:mod:`synful.segment`) carry ids that cannot be compared with the ground
truth's.  ``matching_seg_container`` / ``matching_seg_dataset`` name the
segmentation (the ground truth's neuron labels) in which the predicted pre
and post sites are looked up *for matching only*: a prediction then matches
when its sites lie in the ground-truth partner's neurons, while the filters
keep using the ids the extraction wrote.  Evaluation may read the ground
truth; extraction never needs to.

Calibrate on validation, report on test (:func:`read_calibration`,
``synful evaluate TEST_RUN --calibration VALIDATION``): the score threshold
with the highest f-score in a validation run's sweep (the lowest such
threshold on a tie) is applied unchanged to the test run, which is evaluated
at that one threshold.  The validation results must come from a sweep (not
from a calibrated evaluation) with the same metric settings (every
[Evaluation] key except paths and ``score_thresholds``) and, when both runs
record them, the same extraction settings (every [Extraction] key except
paths, segmentation and store); a calibration from the run itself is
refused.  The test results record the chosen threshold, the validation
f-score there, the validation results file and its SHA-256 under
``calibration``.  This is how Synful's grid searches were reported.

Layout: :mod:`.common` (errors, inputs), :mod:`.settings` (the FAFB evaluation
JSON, skeleton ids), :mod:`.filters`, :mod:`.matching`, :mod:`.sweep`
(:func:`evaluate`), :mod:`.results` (files, plot), :mod:`.calibration`,
:mod:`.runs` (:func:`evaluate_config`, :func:`evaluate_run`).
"""

from __future__ import annotations

from .calibration import calibrated, read_calibration
from .common import MATCH_DTYPE, EvaluationError, Matching, check_inputs, logger, read_ground_truth
from .filters import filter_partners
from .matching import match_partners
from .results import plot_precision_recall, precision_recall_figure, results_filename, write_results
from .runs import evaluate_config, evaluate_run
from .settings import JSON_REQUIRED, check_settings, read_evaluation_json, read_skeleton_ids
from .sweep import auto_score_thresholds, evaluate

__all__ = [
    "EvaluationError",
    "Matching",
    "MATCH_DTYPE",
    "read_evaluation_json",
    "read_skeleton_ids",
    "read_ground_truth",
    "check_inputs",
    "filter_partners",
    "match_partners",
    "evaluate",
    "write_results",
    "plot_precision_recall",
    "precision_recall_figure",
    "auto_score_thresholds",
    "evaluate_config",
    "evaluate_run",
    "results_filename",
    "read_calibration",
]
