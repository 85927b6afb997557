#!/usr/bin/env bash
# README's main job on the embedded default: a random-weight Phi-3-mini (exact shapes, 2 of its
# 32 layers so it finishes in minutes), int4, compiled for this host, for an arm64 board and for
# an Android phone, then run on four devices: the host, arm64 under qemu, and the emulated arm64
# board (real sshd) and phone (real adb server) that `edgesmith emulators start` brings up on
# loopback, on ports the OS picks. Emulated devices' timings are qemu's, not a device's. Text goes
# in and comes out through the real Phi-3 tokenizer (install.sh builds it); random weights make
# the words random.
# Installs what is missing first (scripts/install.sh, into <repo>/.venv).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${EDGESMITH_VENV:-$(pwd)/.venv}
bash scripts/install.sh --if-needed  # nothing to do when the venv holds requirements.lock already
es="$venv/bin/edgesmith"
py="$venv/bin/python"
MODEL=${MODEL:-random:phi-3-mini-4k:layers=2}
PROMPT="The capital of France is"
out=${DEMO_OUT:-dist/demo}  # tests/test_demo.py: a folder of its own
mkdir -p "$out"
# One quantization on every device, so their tokens can be compared (each target's own default
# would give the host int8 activations and the baseline arm64 board float ones).
QUANT=q4f16
"$es" compile "$MODEL" --quant $QUANT --target host -o "$out/host"
"$es" compile "$MODEL" --quant $QUANT --target arm64-linux -o "$out/arm64"
"$es" compile "$MODEL" --quant $QUANT --target android-arm64 -o "$out/android"
"$es" inspect "$out/host"

"$es" emulators start --free-ports --devices-out "$out/devices.yaml"
trap '"$es" emulators stop >/dev/null' EXIT
export EDGESMITH_DEVICES="$out/devices.yaml"
"$es" devices

run() {  # run NAME BUNDLE [--device D]: greedy tokens and their text, kept as JSON for the summary
  echo "== $1: $PROMPT"
  "$es" run "${@:2}" --prompt "$PROMPT" -n 8 --json > "$out/run-$1.json"
  "$py" - "$out/run-$1.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"  {r.get('text', '')!r}  (tokens {' '.join(map(str, r['output_ids']))})")
label = " (emulated: qemu, not the device's speed)" if r.get("emulated") else ""
print(f"  prefill {r['prefill_tok_s']:.1f} tok/s, decode {r['decode_tok_s']:.1f} tok/s{label}")
PY
}
run host "$out/host"
run arm64-qemu "$out/arm64" --device arm64-qemu
run board "$out/arm64" --device board
run phone "$out/android" --device phone
echo "== host (chat)"
"$es" run "$out/host" --chat --prompt "What is the capital of France?" -n 16
echo "== phone (adb, a conversation on one KV cache)"
printf 'Hello!\nWhat is the capital of France?\n' | "$es" run "$out/android" --device phone --interactive -n 4
echo "== host (profile)"
# kept in a file (its records are what `edgesmith compare` reads); the tables shown here
"$es" profile "$out/host" -p 128 -n 32 -r 3 --kernels 5 -o "$out/host-profile.md"
echo "(this profile, with its records for \`edgesmith compare\`: $out/host-profile.md)"

"$py" - "$out" "$es" <<'PY'
import json, os, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = [(n, json.loads((out / f"run-{n}.json").read_text())) for n in ("host", "arm64-qemu", "board", "phone")]
same = len({tuple(r["output_ids"]) for _, r in rows}) == 1
print("\nSummary")
print(f"  bundles: {out}/host, {out}/arm64, {out}/android (devices file: {out}/devices.yaml)")
for name, r in rows:
    label = " (emulated: qemu)" if r.get("emulated") else ""
    print(f"  {name:10s} tokens {' '.join(map(str, r['output_ids']))} {r.get('text', '')!r}")
    print(f"  {'':10s} prefill {r['prefill_tok_s']:.1f} tok/s, decode {r['decode_tok_s']:.1f} tok/s{label}")
print("  the four devices gave " + ("the same tokens" if same else "DIFFERENT tokens (a bug: please report it)"))
es = os.path.relpath(sys.argv[2])  # edgesmith is in the venv, not on PATH: the path works as typed
print(f"\nNext (or `source {os.path.dirname(es)}/activate` first, then plain `edgesmith`):")
print(f"  {es} run {out}/host --interactive                  # chat with it (Ctrl-C stops a reply, Ctrl-D leaves)")
print(f"  {es} serve {out}/host --port 8080                  # an OpenAI-compatible server")
print(f"  {es} emulators start && {es} profile {out}/arm64 --device board   # tok/s you can trust")
print(f"  {es} farm run --model random:tiny --out farm-out     # every device, one report")
print(f"  {es} compile ./YOUR-PHI3-FOLDER --target android-arm64")
sys.exit(0 if same else 1)
PY
