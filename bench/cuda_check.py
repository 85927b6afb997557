"""The CUDA check: the whole model on an NVIDIA GPU, greedy tokens equal to the host's, decode tok/s.

Two steps, because the GPU machine has no TVM and no edgesmith (it needs neither):

  python bench/cuda_check.py prepare [--model random:tiny] [--out dist/cuda-check]
      here (any machine with apache-tvm and nvcc): compiles the model for `cuda` (plain, and
      with --cuda-graph) and for `host`, runs the host bundle for the reference greedy tokens,
      checks that the CUDA kernels compile with nvcc, and leaves OUT/{bundle (cuda),
      bundle-graph (cuda, CUDA graphs), host-bundle, expected.json}.

  python3 bench/cuda_check.py run [--out dist/cuda-check]
      on the GPU machine (python3 stdlib, nvcc on PATH, the NVIDIA driver): runs the cuda
      bundle's own runner (which compiles the kernels with nvcc -arch=native when it loads
      them), compares its greedy tokens with expected.json, times decode, then the same for
      bundle-graph (result "cuda_graph"), and writes OUT/result.json — copy it to
      bench/results/cuda_check.json.

Under 5 minutes on a GPU machine: random:tiny loads in seconds; the nvcc compile of the
kernels (~40 of them) takes most of the time (~30-60 s).
"""
from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/NAME.py`: import siblings as bench.NAME from the
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # repo root; bench/ itself never on sys.path
from bench.gpu_runner import run_runner  # noqa: E402  (stdlib only: it runs on the GPU machine)

PROMPT = [1, 450, 4996, 17354, 1701, 432]  # fixed ids, all < 512 (random:tiny's vocab)
NEW_TOKENS = 32


def _runner(bundle: Path, args: list[str], timeout: float = 280) -> list[dict]:
    try:
        return run_runner(bundle, args, timeout=timeout)
    except RuntimeError as err:
        sys.exit(f"cuda_check: {err}")


def _generate(bundle: Path, prompt: list[int]) -> dict:
    return _runner(bundle, ["generate", "--tokens", ",".join(map(str, prompt)), "-n", str(NEW_TOKENS)])[-1]


def prepare(args) -> int:
    from edgesmith.compiler.build import compile_bundle
    from edgesmith.compiler.bundle.folder import read_manifest

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    cuda = compile_bundle(args.model, "q4f16", "cuda", out / "bundle")
    # the same with --cuda-graph, run beside it: its tokens must equal the host's too
    compile_bundle(args.model, "q4f16", "cuda", out / "bundle-graph", cuda_graph=True)
    # the reference keeps the GPU bundle's KV cache dtype (float16 by default on GPUs)
    kv_dtype = read_manifest(cuda).kv_dtype
    host = compile_bundle(args.model, "q4f16", "host", out / "host-bundle", kv_dtype=kv_dtype)
    print(f"compiled {args.model} for cuda (with and without CUDA graphs) and host in {time.time() - t0:.0f} s")
    vocab = read_manifest(host).config.vocab_size
    prompt = [t % vocab for t in PROMPT]
    ref = _generate(host, prompt)
    print(f"host greedy tokens: {ref['output_ids']}")
    if shutil.which("nvcc"):  # what the runner will do on the GPU machine, for an sm_90 GPU
        done = subprocess.run(["nvcc", "--fatbin", "-O3", "-arch=sm_90", "-o", str(out / "kernels.fatbin"),
                               str(cuda / "kernels" / "module.cu")], capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"cuda_check: the CUDA kernels do not compile with nvcc: {done.stderr[-600:]}")
        (out / "kernels.fatbin").unlink()
        print("CUDA kernels compile with nvcc (sm_90)")
    (out / "expected.json").write_text(json.dumps({
        "model": args.model, "prompt_ids": prompt, "new_tokens": NEW_TOKENS, "host_output_ids": ref["output_ids"],
        "host_decode_tok_s": ref["decode_tok_s"], "prepared": datetime.datetime.now().isoformat(timespec="seconds"),
    }, indent=1))
    # host-bundle stays: `run --bundle OUT/host-bundle` checks this script's run step on a CPU
    print(f"ready: {out}/bundle and {out}/expected.json; on the GPU machine: python3 bench/cuda_check.py run")
    return 0


def _gpu_name() -> str:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
        return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no nvidia-smi)"


def _check(bundle: Path, expected: dict) -> dict:
    """Greedy tokens against the host's, and bench's tok/s, of one bundle."""
    got = _generate(bundle, expected["prompt_ids"])  # loads the library: nvcc compiles the kernels here
    bench = [d for d in _runner(bundle, ["bench", "-p", "16", "-n", "64", "--warmup", "1", "-r", "3"])
             if d.get("summary")][-1]
    return {
        "device": json.loads((bundle / "manifest.json").read_text()).get("device", {}).get("api", "cpu"),
        "tokens_equal": got["output_ids"] == expected["host_output_ids"],
        "output_ids": got["output_ids"],
        "load_s": got["load_s"],
        "decode_tok_s": bench["decode_tok_s"],
        "decode_tok_s_std": bench["decode_tok_s_std"],
        "prefill_tok_s": bench["prefill_tok_s"],
    }


def run(args) -> int:
    out = Path(args.out)
    bundle = Path(args.bundle) if args.bundle else out / "bundle"
    expected = json.loads((out / "expected.json").read_text())
    t0 = time.time()
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "gpu": _gpu_name(),
              "model": expected["model"], **_check(bundle, expected), "host_output_ids": expected["host_output_ids"]}
    graph = out / "bundle-graph"
    if not args.bundle and graph.exists():  # the --cuda-graph bundle, right after the plain one
        result["cuda_graph"] = _check(graph, expected)
    result["wall_s"] = round(time.time() - t0, 1)
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0 if result["tokens_equal"] and result.get("cuda_graph", {"tokens_equal": True})["tokens_equal"] else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)
    a = sub.add_parser("prepare", help="here: build the cuda bundle and the host's reference tokens")
    a.add_argument("--model", default="random:tiny")
    a.add_argument("--out", default="dist/cuda-check")
    b = sub.add_parser("run", help="on the GPU machine: run, compare, time; writes OUT/result.json")
    b.add_argument("--out", default="dist/cuda-check")
    b.add_argument("--bundle", help="bundle to run (default OUT/bundle; a host bundle checks the steps on a CPU)")
    args = p.parse_args()
    return prepare(args) if args.step == "prepare" else run(args)


if __name__ == "__main__":
    sys.exit(main())
