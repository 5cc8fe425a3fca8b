"""Bring Synful's published networks over: a TF1 checkpoint of funlib's U-Net -> a training setup of ours.

``import_synful(source, checkpoint, base_dir, experiment, train_id)`` reads Synful's ``parameter.json``
(``source``: the file, or the setup directory holding it), scaffolds ``<base>/<exp>/02_train/setup_t<T>``
whose ``train_config.ini`` describes the same network and targets, reads the TF1 checkpoint with
``tf.train.load_checkpoint`` (no TF1 graph is built) and saves its weights as our checkpoint
``checkpoints/model_<iteration>.weights.h5`` (:func:`synful.train.checkpoint_path`), so that
``prepare_prediction.py``, ``synful predict`` and ``synful extract`` run it unchanged.

Synful's single-task networks come in pairs (an indicator network such as p_setup52 and a vector
network such as p_setup10): ``pair=(source2, checkpoint2)`` imports both into one model with
``unet_model = paired`` (two independent U-Nets on the same input, one per head).

The network (funlib.learn.tensorflow ``unet`` + Synful's ``generate_network.py``): per level two valid
3x3x3 convolutions with ReLU, max-pooling, a transposed convolution with ReLU to upsample, a centre crop
(floor on the low side) of the skip connection concatenated before the upsampled features, and 1x1x1
linear heads ``syn_indicator_0`` (1 channel) and ``partner_vector_0`` (3 channels).  Synful's graph always
has both heads; a single-task network trained one of them only (the other loss scale 0), and only that one
is imported.  Variables, TF1 name -> our layer (``P`` the layer prefix: none, or ``v_`` for the vector
U-Net of a pair; ``D`` the decoder prefix: ``P``, or ``d_`` for funlib head 0 and ``m_`` for head 1 of a
dh_unet; every variable is ``.../kernel`` and ``.../bias`` in both, same shapes, no transposition: TF1
and Keras both store conv kernels (z, y, x, in, out) and transposed-conv kernels (z, y, x, out, in)):

- ``unet_layer_<l>_left_<i>`` -> ``P enc<l>_conv<i>`` (the bottom level: ``P bottom_conv<i>``)
- ``decoder_<h>_layer_<l>/unet_up_<l+1>_to_<l>`` -> ``D up<l>``
- ``decoder_<h>_layer_<l>/unet_layer_<l>_right_<i>`` -> ``D dec<l>_conv<i>``
- ``syn_indicator_0`` -> ``syn_indicator``; ``partner_vector_0`` -> ``partner_vectors_conv``

Optimiser variables (``*/Adam``, ``*/Adam_1``, ``beta1_power``, ``beta2_power``, ``training_iteration``)
and the untrained head of a single-task network are skipped; any other variable, a missing one or one of
another shape refuses the import with one line naming the variable, its shape and the expected shape.

``parameter.json`` keys -> ``train_config.ini`` [Training] (a pair: the indicator network's file gives
everything but the vector keys, the vector network's file gives those):

============================  ==========================================================================
parameter.json                [Training]
============================  ==========================================================================
input_size                    input_shape (voxels, z, y, x)
voxel_size                    voxel_size (nm); absent: (40, 4 * downsample_xy, 4 * downsample_xy)
downsample_xy                 only through voxel_size
downsample_factors            downsample_factors (a pair: must be equal)
fmap_num, fmap_inc_factor     fmap_num, fmap_inc_factor (vector network of a pair: paired_fmap_num,
                              paired_fmap_inc_factor); a list of equal factors is one factor
unet_model                    unet_model: vanilla, dh_unet; a pair of single-task networks: paired
m_loss_scale, d_loss_scale    tasks (the heads with a scale > 0; both None: both), m_loss_scale,
                              d_loss_scale x d_scale^2 (our vectors are nm, Synful's nm x d_scale)
d_scale                       vector_scale = 1 / d_scale (the vector head outputs nm)
m_loss_type, activation       m_loss_type: cross_entropy -> sigmoid_ce; mean_squared_error -> mse
                              (prediction clips to [0, 1], as Synful), with activation sigmoid ->
                              sigmoid_ce (prediction applies the sigmoid, as Synful's head did)
blob_radius, d_blob_radius    blob_radius, d_blob_radius (nm)
cliprange                     balance_clip
reject_probability            reject_probability
learning_rate                 learning_rate (Adam betas 0.95, 0.999, epsilon 1e-8: ours by default)
max_iteration                 iterations
snapshot_freq                 snapshot_every
output_size                   with train_net_config.json / test_net_config.json beside parameter.json
                              (input_shape, output_shape): crop_to_factor, the variant whose output
                              shapes match (later funlib versions crop each upsampled feature map; the
                              weights do not tell); no shapes stated: the variant input_size fits,
                              without when both do (Synful's setup01: input 42 z fits only without)
(fixed by funlib)             kernel_size 3,3,3; level_kernel_sizes []; num_convs 2;
                              upsampling transposed_conv; upsampling_relu true
blob_mode, loss_comb_type,    accepted silently at Synful's usual value (ball, sum, mask, false /
d_loss_weight1, clip_         None / 1), which is what we do; any other value is named in the warning
gradients, d_transition,
d_transition_iteration,
d_loss_weight2, checkpoint,
checkpoint_iteration,
num_repetitions_last_layer
any other key                 named in the warning
============================  ==========================================================================

Keys with no equivalent are named in one warning line (logged, and returned).  The iteration of our
checkpoint comes from the checkpoint name (``train_net_checkpoint_300000`` -> 300000; a pair: the
indicator network's) or ``iteration``.  Everything is checked before the setup is created; a failure
while writing removes it again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from pathlib import Path

from .errors import SynfulError, read_json_file

__all__ = ["SynfulImportError", "SynfulNetwork", "read_synful_network", "training_values", "variable_map",
           "import_synful"]

logger = logging.getLogger(__name__)

#: the parameter file Synful's setups hold
PARAMETER_FILE = "parameter.json"

# keys read by the mapping (besides output_size, which is checked)
_MAPPED = {"input_size", "voxel_size", "downsample_xy", "downsample_factors", "fmap_num", "fmap_inc_factor",
           "unet_model", "m_loss_scale", "d_loss_scale", "d_scale", "m_loss_type", "activation", "blob_radius",
           "d_blob_radius", "cliprange", "reject_probability", "learning_rate", "max_iteration", "snapshot_freq",
           "output_size"}
# keys without an equivalent that change nothing at these values (what Synful's published setups use)
_NEUTRAL = {"blob_mode": ("ball",), "loss_comb_type": ("sum",), "d_loss_weight1": ("mask",),
            "clip_gradients": (False, None), "d_transition": (False, None), "d_transition_iteration": (None,),
            "d_loss_weight2": (None,), "checkpoint": (None,), "checkpoint_iteration": (None,),
            "num_repetitions_last_layer": (1, None)}
# TF1 variables that are not network weights
_OPTIMIZER_VARIABLE = re.compile(r"(^|/)(Adam(_\d+)?|beta[12]_power|training_iteration|global_step)$")
_HEAD_SCOPES = {"syn_indicator": "syn_indicator_0", "partner_vectors": "partner_vector_0"}


class SynfulImportError(SynfulError):
    """A Synful parameter file or TF1 checkpoint cannot be imported; the message names file, key or variable."""


@dataclasses.dataclass(frozen=True)
class SynfulNetwork:
    """One Synful network: its parameter file and values, TF1 checkpoint prefix and task.

    ``task``: ``both``, ``indicator`` or ``vectors`` (the heads whose loss scale is > 0);
    ``iteration``: from the checkpoint name (``..._<N>`` or ``...-<N>``), or None.
    """

    parameter_file: Path
    params: dict
    checkpoint: str
    task: str
    iteration: int | None


def _parameter_file(source) -> Path:
    source = Path(source)
    if source.is_dir():
        source = source / PARAMETER_FILE
        if not source.is_file():
            raise SynfulImportError(f"{source}: Synful parameter file not found (give the setup directory that "
                                    f"holds {PARAMETER_FILE}, or the file itself)")
    return source


def _checkpoint_prefix(checkpoint) -> str:
    """The TF1 checkpoint prefix of ``checkpoint``: a prefix, one of its files, or a directory (latest)."""
    import tensorflow as tf

    path = Path(checkpoint)
    if path.is_dir():
        latest = tf.train.latest_checkpoint(str(path))
        if latest is None:
            raise SynfulImportError(f"{path}: no TF1 checkpoint in this directory (no 'checkpoint' index file; "
                                    f"give the checkpoint prefix, e.g. {path}/train_net_checkpoint_300000)")
        return latest
    prefix = re.sub(r"\.(index|meta|data-\d+-of-\d+)$", "", str(path))
    if not Path(prefix + ".index").is_file():
        raise SynfulImportError(f"{checkpoint}: no TF1 checkpoint (expected {prefix}.index and {prefix}.data-*)")
    return prefix


def _task(params: dict, path: Path) -> str:
    m, d = params.get("m_loss_scale", 1.0), params.get("d_loss_scale", 1.0)
    if m is None and d is None:  # Synful: both None means both 1
        return "both"
    if m is None or d is None:
        raise SynfulImportError(f"{path}: m_loss_scale {m} and d_loss_scale {d}: both None or both numbers")
    if m > 0 and d > 0:
        return "both"
    if m > 0:
        return "indicator"
    if d > 0:
        return "vectors"
    raise SynfulImportError(f"{path}: m_loss_scale and d_loss_scale are both 0: the network trained no head")


def read_synful_network(source, checkpoint) -> SynfulNetwork:
    """Read the parameter file of ``source`` (a ``parameter.json`` or its setup directory) and locate the
    TF1 checkpoint ``checkpoint`` (prefix such as ``train_net_checkpoint_300000``, one of its files, or
    a directory with a ``checkpoint`` index).  Raises SynfulImportError naming the path."""
    path = _parameter_file(source)
    params = read_json_file(path, "Synful parameter file", SynfulImportError)
    if not isinstance(params, dict):
        raise SynfulImportError(f"{path}: expected a JSON object of Synful parameters")
    for k in ("input_size", "downsample_factors", "fmap_num", "fmap_inc_factor"):
        if k not in params:
            raise SynfulImportError(f"{path}: key {k} missing (needed to build the network)")
    prefix = _checkpoint_prefix(checkpoint)
    m = re.search(r"[_-](\d+)$", Path(prefix).name)  # gunpowder: ..._<N>; tf.compat.v1 Saver: ...-<N>
    return SynfulNetwork(path, params, prefix, _task(params, path), int(m.group(1)) if m else None)


def _inc_factor(params: dict, path: Path) -> int:
    inc = params["fmap_inc_factor"]
    if isinstance(inc, list):
        if len(set(inc)) != 1:
            raise SynfulImportError(f"{path}: fmap_inc_factor {inc}: only one factor for all levels can be imported")
        inc = inc[0]
    return int(inc)


def _indicator_loss(params: dict, path: Path) -> str:
    kind = params.get("m_loss_type", "cross_entropy")
    activation = params.get("activation")
    if kind == "cross_entropy":
        return "sigmoid_ce"  # Synful's head is linear here whatever `activation` says
    if kind != "mean_squared_error":
        raise SynfulImportError(f"{path}: m_loss_type {kind!r}: expected cross_entropy or mean_squared_error")
    if activation is None:
        return "mse"
    if activation == "sigmoid":
        return "sigmoid_ce"
    raise SynfulImportError(f"{path}: activation {activation!r} of the indicator head: only None or sigmoid can "
                            f"be imported")


def _unmapped(net: SynfulNetwork) -> list[str]:
    out = []
    for k, v in net.params.items():
        if k in _MAPPED or (k in _NEUTRAL and v in _NEUTRAL[k]):
            continue
        out.append(f"{k}={json.dumps(v)}")
    if net.params.get("m_loss_type") == "mean_squared_error" and net.params.get("activation") == "sigmoid":
        out.append("m_loss_type=mean_squared_error with activation=sigmoid (trained as sigmoid_ce here)")
    return out


def training_values(indicator: SynfulNetwork, vectors: SynfulNetwork | None = None) -> tuple[dict, list[str]]:
    """[Training] values equivalent to one Synful network, or to a pair (``indicator`` + ``vectors``).

    Returns ``(values, unmapped)``: the values to write into train_config.ini, and ``key=value``
    strings of the parameter-file keys with no equivalent (see the module docstring's table).
    Raises SynfulImportError for what cannot be represented (a pair of networks that are not one
    indicator-only and one vectors-only vanilla U-Net with equal downsampling, ...).
    """
    p, path = indicator.params, indicator.parameter_file
    unet_model = p.get("unet_model", "vanilla")
    if unet_model not in ("vanilla", "dh_unet"):
        raise SynfulImportError(f"{path}: unet_model {unet_model!r}: expected vanilla or dh_unet")
    if unet_model == "dh_unet" and indicator.task != "both":
        raise SynfulImportError(f"{path}: unet_model dh_unet with one loss scale 0: a two-decoder network must "
                                f"train both heads")
    dxy = int(p.get("downsample_xy", 1))
    values = {
        "input_shape": tuple(int(v) for v in p["input_size"]),
        "voxel_size": tuple(int(v) for v in p.get("voxel_size", (40, 4 * dxy, 4 * dxy))),
        "downsample_factors": [tuple(int(v) for v in f) for f in p["downsample_factors"]],
        "fmap_num": int(p["fmap_num"]),
        "fmap_inc_factor": _inc_factor(p, path),
        "unet_model": unet_model,
        "tasks": indicator.task,
        "kernel_size": (3, 3, 3), "level_kernel_sizes": [], "num_convs": 2,
        "upsampling": "transposed_conv", "upsampling_relu": True,
    }
    d_source = indicator
    if vectors is not None:
        q, qpath = vectors.params, vectors.parameter_file
        if indicator.task != "indicator" or vectors.task != "vectors":
            raise SynfulImportError(f"{path} ({indicator.task}) and {qpath} ({vectors.task}): a pair needs an "
                                    f"indicator-only network (d_loss_scale 0) and a vectors-only one (m_loss_scale 0)")
        for net in (indicator, vectors):
            if net.params.get("unet_model", "vanilla") != "vanilla":
                raise SynfulImportError(f"{net.parameter_file}: unet_model {net.params['unet_model']!r}: a pair "
                                        f"holds two single-task vanilla U-Nets")
        q_factors = [tuple(int(v) for v in f) for f in q["downsample_factors"]]
        if q_factors != values["downsample_factors"]:
            raise SynfulImportError(f"{qpath}: downsample_factors {q['downsample_factors']} differ from "
                                    f"{path}'s {p['downsample_factors']}: the two U-Nets must give one output shape")
        values.update(unet_model="paired", tasks="both", paired_fmap_num=int(q["fmap_num"]),
                      paired_fmap_inc_factor=_inc_factor(q, qpath))
        d_source = vectors
    q = d_source.params
    d_scale = float(q.get("d_scale", 1.0))
    if d_scale <= 0:
        raise SynfulImportError(f"{d_source.parameter_file}: d_scale {d_scale}: must be > 0")
    m_scale, d_loss = p.get("m_loss_scale", 1.0), q.get("d_loss_scale", 1.0)
    values.update(
        m_loss_type=_indicator_loss(p, path),
        m_loss_scale=float(1.0 if m_scale is None else m_scale),
        d_loss_scale=float(1.0 if d_loss is None else d_loss) * d_scale ** 2,
        vector_scale=1.0 / d_scale)
    for ours, theirs, src in (("blob_radius", "blob_radius", p), ("d_blob_radius", "d_blob_radius", q),
                              ("reject_probability", "reject_probability", p),
                              ("learning_rate", "learning_rate", p)):
        if theirs in src:
            values[ours] = float(src[theirs])
    if "cliprange" in p:
        values["balance_clip"] = tuple(float(v) for v in p["cliprange"])
    if "max_iteration" in p:
        values["iterations"] = int(p["max_iteration"])
    if "snapshot_freq" in p:
        values["snapshot_every"] = int(p["snapshot_freq"])
    unmapped = _unmapped(indicator)
    if vectors is not None:
        unmapped += [u for u in _unmapped(vectors) if u not in unmapped]
    return values, unmapped


def variable_map(cfg, task: str, unet_model: str, prefix: str = "") -> dict[str, str]:
    """Our layer name -> TF1 variable scope of one Synful network, in the order funlib creates them.

    ``task`` (``both``, ``indicator``, ``vectors``): the heads imported; ``unet_model``: the network's
    own (``vanilla`` or ``dh_unet``); ``prefix``: our layer prefix of its U-Net (``v_`` for the vector
    U-Net of a pair).  Each scope holds ``kernel`` and ``bias``.
    """
    levels = len(cfg.downsample_factors)
    scopes = {}
    for level in range(levels + 1):
        ours = f"{prefix}bottom" if level == levels else f"{prefix}enc{level}"
        for i in range(cfg.num_convs):
            scopes[f"{ours}_conv{i}"] = f"unet_layer_{level}_left_{i}"
    # funlib's decoder 0 feeds partner_vector, decoder 1 syn_indicator (generate_network.py)
    decoders = [(0, "d_"), (1, "m_")] if unet_model == "dh_unet" else [(0, prefix)]
    for head, ours in decoders:
        for level in reversed(range(levels)):
            scope = f"decoder_{head}_layer_{level}"
            scopes[f"{ours}up{level}"] = f"{scope}/unet_up_{level + 1}_to_{level}"
            for i in range(cfg.num_convs):
                scopes[f"{ours}dec{level}_conv{i}"] = f"{scope}/unet_layer_{level}_right_{i}"
    if task in ("both", "indicator"):
        scopes["syn_indicator"] = _HEAD_SCOPES["syn_indicator"]
    if task in ("both", "vectors"):
        scopes["partner_vectors_conv"] = _HEAD_SCOPES["partner_vectors"]
    return scopes


def _fmt(shape) -> str:
    return str(tuple(int(s) for s in shape))


def _read_weights(model, net: SynfulNetwork, scopes: dict[str, str]) -> dict[str, list]:
    """Our layer name -> [kernel, bias] arrays from ``net``'s checkpoint, every shape checked against ``model``."""
    import numpy as np
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(net.checkpoint)
    except Exception as e:  # a truncated or foreign file: TF's message says which
        raise SynfulImportError(f"{net.checkpoint}: cannot read TF1 checkpoint: {str(e).splitlines()[0]}") from None
    have = reader.get_variable_to_shape_map()
    desc = (f"the network of {net.parameter_file} (fmap_num {net.params['fmap_num']}, fmap_inc_factor "
            f"{net.params['fmap_inc_factor']}, downsample_factors {net.params['downsample_factors']})")
    weights, used = {}, set()
    for layer_name, scope in scopes.items():
        arrays = []
        for var, expected in zip(("kernel", "bias"), (w.shape for w in model.get_layer(layer_name).weights)):
            name = f"{scope}/{var}"
            expected = tuple(int(s) for s in expected)
            if name not in have:
                raise SynfulImportError(f"{net.checkpoint}: variable {name} missing (expected shape {_fmt(expected)} "
                                        f"for {desc})")
            if tuple(have[name]) != expected:
                raise SynfulImportError(f"{net.checkpoint}: variable {name} has shape {_fmt(have[name])}, {desc} "
                                        f"expects {_fmt(expected)}")
            arrays.append(np.asarray(reader.get_tensor(name), np.float32))
            used.add(name)
        weights[layer_name] = arrays
    # the head a single-task network never trained (its loss scale 0)
    skipped = {f"{s}/{v}" for h, s in _HEAD_SCOPES.items() for v in ("kernel", "bias")
               if s not in scopes.values()}
    extra = sorted(n for n in have if n not in used and n not in skipped and not _OPTIMIZER_VARIABLE.search(n))
    if extra:
        raise SynfulImportError(f"{net.checkpoint}: variable {extra[0]} (shape {_fmt(have[extra[0]])}) is not part "
                                f"of {desc}" + (f" ({len(extra) - 1} more)" if len(extra) > 1 else ""))
    return weights


#: Synful's network description files beside parameter.json (gunpowder's input_shape / output_shape, voxels)
NET_CONFIG_FILES = ("train_net_config.json", "test_net_config.json")


def _shape_evidence(nets) -> list[tuple[str, tuple, tuple]]:
    """(where, input shape, output shape) triples the Synful setups state: parameter.json ``output_size`` and
    the ``input_shape`` / ``output_shape`` of train_net_config.json and test_net_config.json beside it."""
    found = []
    for net in nets:
        if net.params.get("output_size") is not None:
            found.append((f"{net.parameter_file} output_size", tuple(int(v) for v in net.params["input_size"]),
                          tuple(int(v) for v in net.params["output_size"])))
        for name in NET_CONFIG_FILES:
            path = net.parameter_file.parent / name
            if path.is_file():
                c = read_json_file(path, "Synful network config", SynfulImportError)
                if isinstance(c, dict) and "input_shape" in c and "output_shape" in c:
                    found.append((f"{path} output_shape", tuple(int(v) for v in c["input_shape"]),
                                  tuple(int(v) for v in c["output_shape"])))
    return found


def _choose_crop_to_factor(cfg, nets, crop_to_factor: bool | None) -> bool:
    """Whether the network crops to factor (funlib versions differ; the weights do not tell): the choice
    given, else the variant whose output shapes match every shape the setups state, else the variant the
    input_size fits (both: without, as the funlib revision of Synful's own setup01 and its input 42 z)."""
    from .config import ConfigError
    from .models import output_shape

    def out(variant: bool, shape):
        try:
            return output_shape(dataclasses.replace(cfg, crop_to_factor=variant), shape)
        except ConfigError:
            return None

    evidence = _shape_evidence(nets)
    variants = [crop_to_factor] if crop_to_factor is not None else [False, True]
    fitting = [v for v in variants if all(out(v, i) == o for _, i, o in evidence) and out(v, cfg.input_shape)]
    if not fitting:
        def shown(shape):
            return ", ".join(f"{list(g) if (g := out(v, shape)) else 'none (input does not fit)'} "
                             f"{'with' if v else 'without'} crop_to_factor" for v in variants)

        unmatched = [(w, i, o) for w, i, o in evidence if all(out(v, i) != o for v in variants)]
        if unmatched or evidence:
            where, i, o = (unmatched or evidence)[0]
            raise SynfulImportError(f"{where}: {list(o)} for input {list(i)}, but the network of the parameter "
                                    f"file gives {shown(i)}")
        raise SynfulImportError(f"{nets[0].parameter_file}: input_size {list(cfg.input_shape)} gives no output: "
                                f"{shown(cfg.input_shape)}")
    return fitting[0]


def import_synful(source, checkpoint, base_dir, experiment: str, train_id: int, *, pair=None,
                  iteration: int | None = None, crop_to_factor: bool | None = None) -> dict:
    """Import a Synful network (or a pair) as ``<base_dir>/<experiment>/02_train/setup_t<train_id>``.

    ``source``: Synful's ``parameter.json`` or its setup directory; ``checkpoint``: its TF1 checkpoint
    (prefix, one of its files, or a directory); ``pair``: ``(source, checkpoint)`` of the other
    single-task network of a pair (order free: the indicator-only and vectors-only networks are told
    apart by their loss scales); ``iteration``: of our checkpoint (default: from the checkpoint name);
    ``crop_to_factor``: whether the funlib U-Net cropped to factor (None: decided from the shapes the
    setups state, see the module docstring).
    Returns ``{"setup": Path, "checkpoint": Path, "iteration": int, "unmapped": [key=value, ...],
    "values": {[Training] key: value}}``.  Raises SynfulImportError before anything is written when the setup
    exists, the parameter file cannot be represented, or a variable is missing, left over or of another
    shape (a bad experiment name: ScaffoldError).
    """
    from .config import Training, read_train_config
    from .io.files import atomic_write
    from .models import PAIRED_VECTORS_PREFIX, build_unet, output_shape
    from .scaffold import create_train_setup, train_setup_dir
    from .train import checkpoint_path

    target_dir = train_setup_dir(base_dir, experiment, train_id)
    if target_dir.exists():
        raise SynfulImportError(f"{target_dir}: setup already exists (remove it, or import with another train id)")
    first = read_synful_network(source, checkpoint)
    nets = [first]
    if pair is not None:
        second = read_synful_network(*pair)
        nets = sorted([first, second], key=lambda n: n.task != "indicator")
    values, unmapped = training_values(nets[0], nets[1] if len(nets) > 1 else None)
    it = iteration if iteration is not None else nets[0].iteration
    if it is None or int(it) < 1:
        raise SynfulImportError(f"{nets[0].checkpoint}: no iteration in the checkpoint name (..._<N>); "
                                f"give --iteration N (>= 1)")
    it = int(it)
    cfg = dataclasses.replace(Training(), **values)
    values["crop_to_factor"] = _choose_crop_to_factor(cfg, nets, crop_to_factor)
    cfg = dataclasses.replace(cfg, crop_to_factor=values["crop_to_factor"])
    logger.info("network %s crop_to_factor (output %s for input %s)", "with" if cfg.crop_to_factor else "without",
                output_shape(cfg), cfg.input_shape)
    model = build_unet(cfg)
    weights = {}
    if len(nets) == 1:
        weights.update(_read_weights(model, first, variable_map(cfg, first.task, values["unet_model"])))
    else:
        weights.update(_read_weights(model, nets[0], variable_map(cfg, "indicator", "vanilla")))
        vec_cfg = dataclasses.replace(cfg, fmap_num=cfg.paired_fmap_num, fmap_inc_factor=cfg.paired_fmap_inc_factor)
        weights.update(_read_weights(model, nets[1], variable_map(vec_cfg, "vectors", "vanilla",
                                                                  PAIRED_VECTORS_PREFIX)))
    missing = [layer.name for layer in model.layers if layer.weights and layer.name not in weights]
    if missing:  # a layer no Synful variable maps to: our model and the mapping disagree
        raise SynfulImportError(f"layer {missing[0]} of the imported network has no Synful variable")
    for name, arrays in weights.items():
        model.get_layer(name).set_weights(arrays)
    if unmapped:
        logger.warning("Synful parameter keys with no equivalent in train_config.ini (ignored): %s",
                       "; ".join(unmapped))

    setup = create_train_setup(base_dir, experiment, train_id, overrides={"train_config.ini": {"Training": values}})
    try:
        written = read_train_config(setup / "train_config.ini")
        for k, v in values.items():
            if getattr(written, k) != getattr(cfg, k):
                raise SynfulImportError(f"{setup / 'train_config.ini'} [Training] {k}: reads back as "
                                        f"{getattr(written, k)!r}, not {getattr(cfg, k)!r}")
        target = checkpoint_path(setup, it)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda tmp: model.save_weights(str(tmp)))
        record = {"iteration": it, "unmapped": unmapped,
                  "networks": [{"parameter_file": str(n.parameter_file.resolve()), "checkpoint": n.checkpoint,
                                "task": n.task} for n in nets]}
        (setup / "checkpoints" / "synful_import.json").write_text(json.dumps(record, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(setup, ignore_errors=True)  # no half-imported setup
        raise
    return {"setup": setup, "checkpoint": target, "iteration": it, "unmapped": unmapped, "values": values}
