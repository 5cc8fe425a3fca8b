"""Fault injection: secrets and commands (issue 7).

- A MongoDB password holding an unescaped ``/`` or ``@`` never appears in any output or file:
  :func:`synful.store.redact_url` parses the URL and withholds one whose credentials it cannot parse.
- A control character (a newline above all) in any [Worker] string that reaches an sbatch script or a
  container command is refused before anything is submitted, with one ``FILE [Worker] key: ...`` error;
  each string is also checked against its Slurm syntax.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from funlib.geometry import Roi

from synful import cluster
from synful.cluster import ClusterError
from synful.config import ConfigError, Worker, fill_template, read_worker_config
from synful.io.volumes import prepare_volume
from synful.scaffold import create_predict_setups, create_train_setup
from synful.store import redact_url

ROOT = Path(__file__).resolve().parent.parent
MARK = "S3CRET"  # in every password below: must never show


# --------------------------------------------------------------------------------------
# redact_url
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    f"mongodb://user:ss@{MARK}1@127.0.0.1:27017",  # raw '@' in the password
    f"mongodb://user:ss/{MARK}1@127.0.0.1:27017/db",  # raw '/' in the password
    f"mongodb://user:a/{MARK}@b@127.0.0.1:27017/db?authSource=admin",  # both
    f"mongodb://user:{MARK} x@127.0.0.1:27017",  # a space
    f"mongodb://user:{MARK}",  # no '@': the 'port' is the password
    f"mongodb://user:{MARK}@h:1/db?x=a@b",  # an '@' after the host: ambiguous
    f"mongodb+srv://user:p/{MARK}@cluster0.example.net/db",
])
def test_unparseable_credentials_are_withheld_whole(url):
    out = redact_url(url)
    assert MARK not in out and out.startswith(url.split("://")[0] + "://<withheld")
    text = redact_url(f"cannot reach {url} within 5 s\nnext line")
    assert MARK not in text and text.startswith("cannot reach ") and text.endswith("\nnext line")


@pytest.mark.parametrize("url, shown", [
    (f"mongodb://user:p%2F{MARK}%40x@127.0.0.1:27017/db", "mongodb://***@127.0.0.1:27017/db"),  # escaped: parses
    ("mongodb://u:p@h:1/db", "mongodb://***@h:1/db"),
    ("mongodb://h1:1,h2:2/db?replicaSet=rs", "mongodb://h1:1,h2:2/db?replicaSet=rs"),
    ("mongodb://[::1]:27017", "mongodb://[::1]:27017"),
    (f"mongodb://u:p@h/db?authMechanismProperties=AWS_SESSION_TOKEN:{MARK}&w=1",
     "mongodb://***@h/db?authMechanismProperties=***&w=1"),
    ("sqlite:///partners.sqlite", "sqlite:///partners.sqlite"),
    ("sqlite:////abs/dir@x/partners.sqlite", "sqlite:////abs/dir@x/partners.sqlite"),
])
def test_parseable_urls_show_hosts_only(url, shown):
    assert redact_url(url) == shown


# --------------------------------------------------------------------------------------
# end to end: extraction with such a password, through the CLI
# --------------------------------------------------------------------------------------

def make_run(base: Path, extraction: dict) -> Path:
    create_train_setup(base, "exp", 0)
    (pdir,) = create_predict_setups(base, "exp", 0, [1000], overrides={"predict_config.ini": {"Extraction": extraction}})
    vs, shape = (8, 4, 4), (8, 32, 32)
    roi = Roi((0, 0, 0), tuple(s * v for s, v in zip(shape, vs)))
    ind = np.zeros(shape, np.uint8)
    ind[3:5, 10:14, 10:14] = 200
    a = prepare_volume(pdir / "predictions.zarr", "volumes/pred_syn_indicator", roi, vs, np.uint8)
    a[roi] = ind
    a._source_data.attrs["scale"] = 1 / 255
    v = prepare_volume(pdir / "predictions.zarr", "volumes/pred_partner_vectors", roi, vs, np.float16, num_channels=3)
    v[roi] = np.zeros((3,) + shape, np.float16)
    v._source_data.attrs["scale"] = 1.0
    return pdir


def files_holding(root: Path, text: str, skip=()) -> list[Path]:
    out = []
    for f in root.rglob("*"):
        if f.is_file() and f not in skip and text.encode() in f.read_bytes():
            out.append(f)
    return out


@pytest.mark.parametrize("where", ["credentials_file", "store_url"])
@pytest.mark.parametrize("password", [f"ss@{MARK}1", f"pa/{MARK}@x", f"p%2F{MARK}%40x"])
def test_a_password_with_slash_and_at_never_appears_in_output_or_files(tmp_path, mongodb_url, password, where):
    host = mongodb_url.split("://", 1)[1].split("/")[0].split("@")[-1]
    url = f"mongodb://synful:{password}@{host}/?authSource=admin"
    secret = tmp_path / "secret.txt"  # outside the experiment: every file in it is checked
    secret.write_text(url + "\n")
    extraction = {"credentials_file": str(secret)} if where == "credentials_file" else {"store_url": url}
    pdir = make_run(tmp_path / "experiments", {**extraction, "database": "synful_secret_test",
                                               "block_shape": (64, 128, 128), "context": (16, 16, 16)})
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-m", "synful", "-v", "extract", str(pdir), "--workers", "1"], env=env,
                         capture_output=True, text=True, timeout=300)
    output = res.stdout + res.stderr
    assert MARK not in output, output[-3000:]
    if "%" not in password:  # unescaped: pymongo refuses the URL; one clear error, exit 2
        assert res.returncode == 2 and "error: " in res.stderr and "<withheld" in res.stderr, output[-3000:]
    assert files_holding(tmp_path / "experiments", MARK, skip={pdir / "predict_config.ini"}) == []


# --------------------------------------------------------------------------------------
# [Worker] strings
# --------------------------------------------------------------------------------------

# ini continuation lines: configparser joins an indented line to the value with a newline
INJECTIONS = {
    "account": "acct\n  touch {marker}",
    "queue": "gpu\n  touch {marker}",
    "mem": "1G\n  touch {marker}",
    "time_limit": "00:10:00\n  touch {marker}",
    "sbatch_extra": "--qos=high\n  touch {marker}",
    "mount_dirs": "/tmp\n  touch {marker}",
    "singularity_container": "/tmp/synful.sif\n  touch {marker}",
    "cluster_profile": "local\n  touch {marker}",
}


@pytest.mark.parametrize("key", sorted(INJECTIONS))
def test_a_newline_in_any_worker_string_is_refused_with_file_section_key(tmp_path, key):
    ini = tmp_path / "worker_config.ini"
    ini.write_text(f"[Worker]\nexecutor = slurm\n{key} = {INJECTIONS[key].format(marker=tmp_path / 'pwned')}\n")
    with pytest.raises(ConfigError) as e:
        read_worker_config(ini)
    msg = str(e.value)
    assert msg.startswith(f"{ini} [Worker] {key}: control character '\\n'"), msg
    assert "\n" not in msg  # one line: the value is shown with repr


@pytest.mark.parametrize("key, value, why", [
    ("queue", "gpu;id", "partition name"),
    ("account", "a b", "account name"),
    ("account", "a\tb", "control character"),
    ("mem", "lots", "size"),
    ("mem", "0G", "size"),
    ("time_limit", "tomorrow", "MM, HH:MM:SS"),
    ("time_limit", "00:00:00", "MM, HH:MM:SS"),
    ("sbatch_extra", ["-q high"], "long form"),
    ("mount_dirs", ["/data,/etc"], "SRC:DST"),
    ("mount_dirs", ["/data:relative"], "SRC:DST"),
    ("mount_dirs", ["/data:/d:exec"], "SRC:DST"),
    ("mount_dirs", ["/data:/d\u2028x"], "control character"),
])
def test_worker_strings_follow_slurm_syntax(tmp_path, key, value, why):
    w = dataclasses.replace(Worker(executor="local"), **{key: value})
    with pytest.raises(ClusterError, match=rf"^\[Worker\] {key}: .*{why}"):
        cluster.check_worker(w)  # also a Worker built in code, even for the local executor


def test_a_valid_worker_section_passes(tmp_path):
    ini = tmp_path / "worker_config.ini"
    ini.write_text("[Worker]\nqueue = gpu-a100\naccount = lab_x.1\nmem = 1.5T\ntime_limit = 2-12:00:00\n"
                   "sbatch_extra = --qos=high, --exclusive, --comment=run 1\nmount_dirs = /data, /scratch:/s:ro\n")
    w = read_worker_config(ini)
    assert w.account == "lab_x.1" and w.mount_dirs == ["/data", "/scratch:/s:ro"]


def test_cli_refuses_an_injected_worker_line_before_submitting(tmp_path):
    create_train_setup(tmp_path, "exp", 0)
    (pdir,) = create_predict_setups(tmp_path, "exp", 0, [1000])
    marker = tmp_path / "pwned"
    wc = pdir / "worker_config.ini"
    wc.write_text(fill_template(wc.read_text(), {"Worker": {"executor": "slurm"}})
                  .replace("account = None", f"account = acct\n  touch {marker}"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for stage in ("predict", "extract"):
        res = subprocess.run([sys.executable, "-m", "synful", stage, str(pdir), "--submit"], env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 2, res.stdout + res.stderr
        assert f"error: {wc} [Worker] account: control character '\\n'" in res.stderr, res.stderr
    assert not marker.exists() and not list(pdir.rglob("jobs.jsonl"))


def test_a_profile_cannot_inject_either(tmp_path):
    profile = tmp_path / "site.yaml"
    profile.write_text('defaults:\n  executor: slurm\n  account: "acct\\necho pwned"\n')
    with pytest.raises(ClusterError, match=rf"^{profile} defaults: account: control character"):
        cluster.load_profile(str(profile))


@pytest.mark.slurm
def test_an_injected_account_never_reaches_sbatch(slurm_cluster, tmp_path):
    marker = tmp_path / "pwned"
    w = Worker(cluster_profile="local", queue="cpu", gpus=0, time_limit="00:05:00", account=f"acct\ntouch {marker}")
    with pytest.raises(ClusterError, match=r"^\[Worker\] account: control character"):
        cluster.launch(w, [sys.executable, "-c", "pass"], name="inject", log_dir=tmp_path)
    assert not marker.exists() and not list(tmp_path.glob("*_submission.sh"))
    assert cluster.read_job_records(tmp_path) == []
