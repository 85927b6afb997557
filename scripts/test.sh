#!/usr/bin/env bash
# README's test command: the whole suite (the emulated sshd/adb devices are started and stopped
# by the tests themselves, on loopback only).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python -m pytest -q -ra "$@"
