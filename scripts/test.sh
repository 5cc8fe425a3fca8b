#!/usr/bin/env bash
# Install everything (venv, pip packages; Debian slurm-wlm + munge are installed by the test set-up
# when missing) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/install.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
