#!/usr/bin/env bash
# README's test command: installs what is missing (scripts/install.sh: apt, and requirements.lock into <repo>/.venv), then the
# whole suite with that venv's Python. The emulated sshd/adb devices are started and stopped by
# the tests themselves, on loopback only, on ports the OS picks. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${EDGESMITH_VENV:-$(pwd)/.venv}
bash scripts/install.sh --if-needed  # nothing to do when the venv holds requirements.lock already
export PYTHONUNBUFFERED=1
exec "$venv/bin/python" -m pytest -q -ra "$@"
