#!/usr/bin/env bash
# README's main job on the embedded default: a random-weight Phi-3-mini (exact shapes, 2 of its
# 32 layers so it finishes in minutes), int4 (q4f16), compiled for this host and for arm64, then
# run on every device of the shipped devices.yaml: the host, arm64 under qemu, and the emulated
# arm64 board (real sshd) and phone (real adb server) that `edgesmith emulators start` brings up
# on loopback. Emulated devices' timings are qemu's, not a device's. Text goes in and comes out
# through the real Phi-3 tokenizer (install.sh builds it); random weights make the words random.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
PATH="${EDGESMITH_VENV:-$(pwd)/.venv}/bin:$PATH"
MODEL=${MODEL:-random:phi-3-mini-4k:layers=2}
PROMPT="The capital of France is"
edgesmith compile "$MODEL" --quant q4f16 --target host -o dist/demo-host
edgesmith compile "$MODEL" --quant q4f16 --target arm64-linux -o dist/demo-arm64
edgesmith compile "$MODEL" --quant q4f16 --target android-arm64 -o dist/demo-android
edgesmith inspect dist/demo-host
edgesmith emulators start
trap 'edgesmith emulators stop' EXIT
edgesmith devices
echo "== host: $PROMPT";  edgesmith run dist/demo-host --prompt "$PROMPT" -n 16
echo "== host (chat)";    edgesmith run dist/demo-host --chat --prompt "What is the capital of France?" -n 16
echo "== host (bench)";   edgesmith bench dist/demo-host -p 128 -n 32 -r 3
echo "== arm64-qemu";     edgesmith run dist/demo-arm64 --device arm64-qemu --prompt "$PROMPT" -n 4
echo "== board (ssh)";    edgesmith run dist/demo-arm64 --device board --prompt "$PROMPT" -n 4
echo "== phone (adb, a conversation on one KV cache)"
printf 'Hello!\nWhat is the capital of France?\n' | edgesmith run dist/demo-android --device phone --interactive -n 4
