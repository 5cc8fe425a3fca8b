"""Typed ini configs: parsing, validation errors that name file, section and key, round trips."""

import dataclasses
from pathlib import Path

import pytest

from synful.config import (PREDICT_SECTIONS, TRAIN_SECTIONS, WORKER_SECTIONS, ConfigError, Extraction,
                           Prediction, Training, Worker, config_reference_markdown, fill_template,
                           read_predict_config, read_train_config, read_worker_config, render_template,
                           write_config)

ROOT = Path(__file__).resolve().parent.parent


def _train_ini(tmp_path, body: str) -> Path:
    d = tmp_path / "experiments" / "exp" / "02_train" / "setup_t0"
    d.mkdir(parents=True)
    p = d / "train_config.ini"
    p.write_text(body)
    return p


def test_defaults_roundtrip(tmp_path):
    p = tmp_path / "train_config.ini"
    p.write_text(render_template(TRAIN_SECTIONS))
    cfg = read_train_config(p)
    assert cfg.voxel_size == (40, 4, 4)
    assert cfg.downsample_factors == [(1, 3, 3), (1, 3, 3), (3, 3, 3)]
    assert cfg.level_kernel_sizes == []  # written as "[]" in the template
    assert cfg.adam_beta1 == 0.95 and cfg.adam_epsilon == 1e-8
    # relative paths resolve against the ini file's folder
    assert cfg.manifest == str((tmp_path / "../../01_data/manifest.yaml").resolve())


def test_values_parse(tmp_path):
    p = _train_ini(tmp_path, "[Training]\nfmap_num = 12\nvoxel_size = (8, 8, 8)\n"
                             "downsample_factors = [[1,2,2],[2,2,2]]\nxla = yes\nlearning_rate = 1e-4\n")
    cfg = read_train_config(p)
    assert cfg.fmap_num == 12 and cfg.voxel_size == (8, 8, 8)
    assert cfg.downsample_factors == [(1, 2, 2), (2, 2, 2)]
    assert cfg.xla is True and cfg.learning_rate == 1e-4
    p = _train_ini(tmp_path / "levels", "[Training]\nlevel_kernel_sizes = [[1,3,3], [3,3,3]]\n")
    assert read_train_config(p).level_kernel_sizes == [(1, 3, 3), (3, 3, 3)]


@pytest.mark.parametrize("line, key, fragment", [
    ("fmap_num = four", "fmap_num", "expected an integer, got 'four'"),
    ("voxel_size = 40, 4", "voxel_size", "expected 3 comma-separated integers"),
    ("downsample_factors = [[1,3,3],[1,3]]", "downsample_factors", "list of 3-tuples"),
    ("unet_model = resnet", "unet_model", "expected one of vanilla, dh_unet, paired, got 'resnet'"),
    ("reject_probability = 1.5", "reject_probability", "must be <= 1"),
    ("fmap_num = 0", "fmap_num", "must be >= 1"),
    ("xla = maybe", "xla", "expected true or false"),
    ("colour = blue", "colour", "unknown key"),
])
def test_bad_values_name_file_section_key(tmp_path, line, key, fragment):
    p = _train_ini(tmp_path, f"[Training]\n{line}\n")
    with pytest.raises(ConfigError) as e:
        read_train_config(p)
    msg = str(e.value)
    assert msg.startswith(f"{p} [Training] {key}: "), msg
    assert fragment in msg


def _predict_ini(tmp_path, section: str, line: str) -> Path:
    p = tmp_path / "predict_config.ini"
    body = {"Prediction": "iteration = 10\n", "Extraction": "", "Evaluation": ""}
    body[section] += line + "\n"
    p.write_text("".join(f"[{k}]\n{v}" for k, v in body.items()))
    return p


@pytest.mark.parametrize("section, line, fragment", [
    # nan < lo and nan > hi are both false: the old range check let nan through
    ("Extraction", "cc_threshold = nan", "expected a finite number, got nan"),
    ("Extraction", "score_thr = inf", "expected a finite number, got inf"),          # no upper bound
    ("Extraction", "max_distance = inf", "expected a finite number, got inf"),       # Optional[float]
    ("Evaluation", "matching_threshold = -inf", "expected a finite number, got -inf"),
    ("Evaluation", "score_thresholds = 0, 5, NaN", "expected a finite number, got 0.0, 5.0, nan"),
    ("Prediction", "block_timeout = Infinity", "expected a finite number, got inf"),
    ("Extraction", "indicator_scale = 0", "must be > 0, got 0.0"),
    ("Extraction", "partner_vectors_scale = nan", "expected a finite number"),
    ("Evaluation", "matching = segments", "expected one of location, segment, skeleton, got 'segments'"),
    ("Evaluation", "skeleton_ids = ids.txt", "skeleton_ids (the FAFB per-neuron protocol) needs matching = skeleton"),
])
def test_non_finite_and_cross_key_values_name_file_section_key(tmp_path, section, line, fragment):
    p = _predict_ini(tmp_path, section, line)
    key = "matching" if line.startswith("skeleton_ids") else line.split("=")[0].strip()
    with pytest.raises(ConfigError) as e:
        read_predict_config(p)
    msg = str(e.value)
    assert msg.startswith(f"{p} [{section}] {key}: "), msg
    assert fragment in msg, msg


def test_non_finite_float_tuples(tmp_path):
    p = _train_ini(tmp_path, "[Training]\nbalance_clip = 0.01, nan\n")
    with pytest.raises(ConfigError, match=r"\[Training\] balance_clip: expected a finite number, got 0.01, nan$"):
        read_train_config(p)


def test_validate_cli_refuses_nan(tmp_path, capsys):
    from synful.cli import main

    p = _predict_ini(tmp_path, "Extraction", "cc_threshold = nan")
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {p} [Extraction] cc_threshold: expected a finite number, got nan"]
    p = _predict_ini(tmp_path, "Extraction", "cc_threshold = 0.7")
    assert main(["validate", str(p)]) == 0


def test_example_message_format(tmp_path):
    p = _train_ini(tmp_path, "[Training]\nfmap_num = four\n")
    with pytest.raises(ConfigError, match=r"02_train/setup_t0/train_config.ini \[Training\] fmap_num: "
                                          r"expected an integer, got 'four'$"):
        read_train_config(p)


def test_missing_required_key(tmp_path):
    p = tmp_path / "predict_config.ini"
    p.write_text("[Prediction]\n[Extraction]\n[Evaluation]\n")
    with pytest.raises(ConfigError, match=r"\[Prediction\] iteration: missing required key"):
        read_predict_config(p)


def test_missing_and_unknown_sections(tmp_path):
    p = tmp_path / "predict_config.ini"
    p.write_text("[Prediction]\niteration = 10\n[Extraction]\n")
    with pytest.raises(ConfigError, match=r"predict_config.ini \[Evaluation\]: missing section"):
        read_predict_config(p)
    p.write_text("[Prediction]\niteration = 10\n[Extraction]\n[Evaluation]\n[Extra]\n")
    with pytest.raises(ConfigError, match=r"\[Extra\]: unknown section"):
        read_predict_config(p)


def test_missing_file_and_garbage(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        read_worker_config(tmp_path / "nope.ini")
    p = tmp_path / "worker_config.ini"
    p.write_text("executor = local\n")
    with pytest.raises(ConfigError, match="line 1: not a valid ini file"):
        read_worker_config(p)


def test_ini_syntax_and_encoding_errors_name_the_line(tmp_path):
    p = tmp_path / "worker_config.ini"
    p.write_text("[Worker]\nexecutor = local\nthis line has no equals sign\n")
    with pytest.raises(ConfigError, match=r"worker_config.ini: line 3: not a valid ini file"):
        read_worker_config(p)
    p.write_text("[Worker]\nexecutor = local\nexecutor = slurm\n")
    with pytest.raises(ConfigError, match=r"worker_config.ini: line 3: not a valid ini file.*executor"):
        read_worker_config(p)
    p.write_bytes(b"[Worker]\n# caf\xe9\nexecutor = local\n")
    with pytest.raises(ConfigError, match=r"worker_config.ini: line 2: not UTF-8 text \(byte 0xe9\)"):
        read_worker_config(p)


def test_optional_values(tmp_path):
    p = tmp_path / "worker_config.ini"
    p.write_text("[Worker]\nsingularity_container = None\nmount_dirs = /a, /b\naccount = lab\n")
    w = read_worker_config(p)
    assert w.singularity_container is None and w.mount_dirs == ["/a", "/b"] and w.account == "lab"


def test_write_config_roundtrip(tmp_path):
    train = dataclasses.replace(Training(), fmap_num=7, downsample_factors=[(1, 2, 2)], manifest="/data/m.yaml")
    out = write_config(tmp_path / "resolved.ini", train)
    assert read_train_config(out) == train
    pred = Prediction(iteration=5, roi_offset=(0, 40, 40), train_setup="/t", out_container="/o.zarr")
    out = write_config(tmp_path / "p.ini", pred, Extraction(), __import__("synful.config").config.Evaluation())
    assert read_predict_config(out).prediction == pred


def test_fill_template_keeps_comments_and_sets_required():
    text = render_template(PREDICT_SECTIONS)
    filled = fill_template(text, {"Prediction": {"iteration": 2000, "split_part": "validation"}})
    assert "iteration = 2000" in filled and "split_part = validation" in filled
    assert filled.count("#") == text.count("#") - 1  # the commented-out required key became a value line
    with pytest.raises(ConfigError, match="no section"):
        fill_template(text, {"Nope": {"a": 1}})


def test_committed_templates_match_dataclasses():
    for name, sections in (("train_config.ini", TRAIN_SECTIONS), ("predict_config.ini", PREDICT_SECTIONS),
                           ("worker_config.ini", WORKER_SECTIONS)):
        assert (ROOT / "configs" / name).read_text() == render_template(sections), (
            f"configs/{name} is stale: run python -m synful.config --templates configs")


def test_readme_reference_is_generated():
    text = (ROOT / "README.md").read_text()
    assert config_reference_markdown() in text, "README config reference is stale: run python -m synful.config --readme README.md"
    for cls in (Training, Prediction, Extraction, Worker):
        for f in dataclasses.fields(cls):
            assert f"`{f.name}`" in text
