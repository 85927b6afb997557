#!/usr/bin/env bash
# Writes requirements.lock: every Python package install.sh and CI install (edgesmith's runtime
# dependencies and the `test` extra, transitive ones included), each at one exact version with its
# sha256 hashes, resolved from pyproject.toml's ranges by pip-tools' pip-compile against the
# registry (and the pip configuration of this machine: the CPU build of torch it finds on disk).
#
#   bash scripts/lock.sh            # refresh: the newest versions the ranges allow, today
#   bash scripts/lock.sh --keep     # re-resolve keeping the versions already locked where they still fit
#
# Then run the suite on the new lock (bash scripts/install.sh --fresh && bash scripts/test.sh)
# before committing it. The lock is for Linux x86_64 and CPython 3.11 (what CI runs); elsewhere
# `install.sh --latest` installs from the ranges.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
PIP_TOOLS=pip-tools==7.7.0
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools/venv"
"$tools/venv/bin/python" -m pip install -q --disable-pip-version-check "$PIP_TOOLS"
upgrade=(--upgrade)
if [ "${1:-}" = "--keep" ]; then  # pip-compile prefers the pins already in its output file
  upgrade=()
  [ -f requirements.lock ] && grep -v '^# ' requirements.lock > "$tools/requirements.lock"
fi
# --allow-unsafe: pin setuptools/pip too (setuptools builds the editable install, without isolation);
# --strip-extras: a constraint-style lock; no index or find-links lines (pip's own config says where).
"$tools/venv/bin/pip-compile" --quiet "${upgrade[@]}" --extra test --generate-hashes --allow-unsafe --strip-extras \
  --no-emit-index-url --no-emit-find-links --no-emit-trusted-host --no-header \
  -o "$tools/requirements.lock" pyproject.toml
{
  echo "# The exact versions install.sh and CI install (edgesmith + its [test] extra, transitive included),"
  echo "# Linux x86_64, CPython 3.11. Written by scripts/lock.sh from pyproject.toml's ranges on $(date -u +%F);"
  echo "# do not edit by hand: change pyproject.toml and run scripts/lock.sh. install.sh --latest ignores it."
  cat "$tools/requirements.lock"
} > "$root/requirements.lock.tmp"
mv "$root/requirements.lock.tmp" "$root/requirements.lock"
echo "lock.sh: wrote requirements.lock ($(grep -c '^[A-Za-z0-9].*==' requirements.lock) packages)"
