#!/usr/bin/env bash
# Install synful into .venv and run the main job on the embedded default: `synful demo` (synthetic data,
# the shipped model, 2 local workers, SQLite store). Extra arguments go to `synful demo` (e.g. --train).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/install.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/synful" demo "$@"
