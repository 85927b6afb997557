#!/usr/bin/env bash
# README's main job on the embedded default: a random-weight Phi-3-mini (exact shapes, 2 of its
# 32 layers so it finishes in minutes), int4 (q4f16), compiled for this host and for arm64, then
# run on the devices of devices.yaml that this machine has: the host, and an arm64 board
# emulated with qemu.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
MODEL=${MODEL:-random:phi-3-mini-4k:layers=2}
edgesmith compile "$MODEL" --quant q4f16 --target host -o dist/demo-host
edgesmith compile "$MODEL" --quant q4f16 --target arm64-linux -o dist/demo-arm64
edgesmith inspect dist/demo-host
echo "== host"
edgesmith run dist/demo-host --tokens 1,450,4996 -n 16
edgesmith bench dist/demo-host -p 64 -n 32 -r 3
echo "== arm64 (qemu)"
edgesmith run dist/demo-arm64 --tokens 1,450,4996 -n 4   # qemu: slow, and its timings are not a device's
