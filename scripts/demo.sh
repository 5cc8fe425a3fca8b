#!/usr/bin/env bash
# Install synful into .venv and run the main job on the embedded default.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/install.sh"
cd "$ROOT"
BASE="${SYNFUL_DEMO_DIR:-$ROOT/experiments}"
[ -d "$BASE/demo/02_train/setup_t0" ] || .venv/bin/python prepare_training.py -e demo -t 0 -d "$BASE"
[ -d "$BASE/demo/03_predict/setup_t0_p0" ] || .venv/bin/python prepare_prediction.py -e demo -t 0 -i 1000 -d "$BASE"
.venv/bin/synful validate "$BASE/demo/02_train/setup_t0" "$BASE/demo/03_predict/setup_t0_p0"
