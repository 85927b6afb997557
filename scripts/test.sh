#!/usr/bin/env bash
# README's test command: installs what is missing (scripts/install.sh: apt, and requirements.lock into <repo>/.venv), then the
# whole suite with that venv's Python. The emulated sshd/adb devices are started and stopped by
# the tests themselves, on loopback only, on ports the OS picks. Extra arguments go to pytest.
#
# The suite runs in one pytest worker per core (pytest-xdist, at most 4), each test file whole in one
# worker (--dist loadfile: a file's bundles, emulators and module fixtures are made once). Every
# worker has its own cache, temporary folders and emulated devices, so the workers never share a
# port or a file; the timing checks scale with what the machine does while they run.
# EDGESMITH_TEST_WORKERS=N sets the count (1: one process, no xdist).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${EDGESMITH_VENV:-$(pwd)/.venv}
bash scripts/install.sh --if-needed  # nothing to do when the venv holds requirements.lock already
export PYTHONUNBUFFERED=1
cores=$(nproc 2>/dev/null || echo 1)
workers=${EDGESMITH_TEST_WORKERS:-$(( cores < 4 ? cores : 4 ))}
parallel=()
if [ "$workers" -gt 1 ]; then
  parallel=(-n "$workers" --dist loadfile)
fi
exec "$venv/bin/python" -m pytest -q -ra "${parallel[@]}" "$@"
