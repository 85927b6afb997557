"""The Vulkan GPU check: full-size Phi-3-mini through NVIDIA's Vulkan driver with our WebGPU runtime
(wgpu-native), its greedy tokens and logits against the host's, its tok/s beside the CUDA bundle's
in the same run.

Two steps, because the GPU machine has neither TVM nor edgesmith (it needs neither):

  python bench/vulkan_gpu_check.py prepare [--model random:phi-3-mini-4k] [--out dist/vulkan-gpu-check]
      here: compiles the model at q4f32 for `linux-vulkan`, `cuda` and `host` into OUT-bundles/;
      fills all three with the same weights (bench/opencl_gpu_check.py's: SHAKE-256 of each
      parameter name); runs the host bundle for the reference greedy tokens and logits; leaves in
      OUT (the folder to carry) the Vulkan and CUDA bundles without their weight shards,
      libvulkan.so.1 (the Vulkan loader, for a machine without one) and expected.json.

  python3 bench/vulkan_gpu_check.py run [--out dist/vulkan-gpu-check]
      on the GPU machine (python3's standard library, the NVIDIA driver; nvcc for the CUDA
      bundle): fills the two bundles' weights again, makes the Vulkan loader find NVIDIA's driver
      (its own nvidia_icd.json, else an ICD file written for libGLX_nvidia.so.0, the library that
      holds NVIDIA's Vulkan driver; the carried libvulkan.so.1 when the machine has no loader),
      runs the Vulkan bundle on the GPU (EDGESMITH_WEBGPU_ADAPTER=gpu: never lavapipe by accident)
      and then the CUDA bundle, and writes OUT/result.json: tokens equal?, max |logit diff|,
      prefill / decode tok/s of both. `--device any` runs on whatever adapter there is (lavapipe
      here: how the script itself is tested on a CPU machine; the CUDA part is then skipped).

On a lent machine (the `run` tool; carry the prepared folder, write the result under $OUT):
  python3 bench/vulkan_gpu_check.py run --out dist/vulkan-gpu-check --result $OUT/vulkan_gpu_check.json
Budget, full model: filling 2.3 GB twice (~40 s each here), NVIDIA's compile of ~36 WGSL
pipelines (seconds) and nvcc's of the CUDA kernels (under a minute), seven runner starts: about
3-4 minutes.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/NAME.py`: import siblings as bench.NAME from the
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # repo root; bench/ itself never on sys.path
from bench.gpu_runner import run_runner  # noqa: E402  (stdlib only: it runs on the GPU machine)
from bench.opencl_gpu_check import (  # noqa: E402  (stdlib only too)
    BENCH, MAX_LOGIT_DIFF, NEW_TOKENS, _bench, _find_lib, _gpu_name, _ldconfig_paths, _logits, _tok_s,
    compare_logits, fill_bundle, prepare_bundles)

VULKAN_LOADER = "libvulkan.so.1"
ICD_DIRS = (Path("/etc/vulkan/icd.d"), Path("/usr/share/vulkan/icd.d"))


def _generate(bundle: Path, prompt: list[int], env=None) -> tuple[dict, dict | None]:
    lines = run_runner(bundle, ["generate", "--tokens", ",".join(map(str, prompt)), "-n", str(NEW_TOKENS)], env=env)
    out = next(l for l in lines if "output_ids" in l)
    return out, next((l["webgpu"] for l in lines if "webgpu" in l), None)


# ------------------------------------------------------------------ prepare (here)


def prepare(args) -> int:
    return prepare_bundles(args, "vulkan", "linux-vulkan", VULKAN_LOADER, "the Vulkan loader",
                           "bench/vulkan_gpu_check.py")


# ------------------------------------------------------------------ run (on the GPU machine)


def vulkan_env(out: Path, device: str, icd_dirs=ICD_DIRS) -> tuple[dict, list[str]]:
    """The environment that makes our plug-in reach NVIDIA's Vulkan driver; notes on what was needed."""
    env = dict(os.environ, EDGESMITH_WEBGPU_ADAPTER=device)
    notes = []
    libs = _ldconfig_paths()
    if _find_lib(VULKAN_LOADER, libs) is None:
        if not (out / VULKAN_LOADER).exists():
            raise SystemExit("vulkan_gpu_check: this machine has no libvulkan.so.1 and none was carried")
        # wgpu-native dlopens libvulkan.so.1 by name: the carried one, through the library path
        loader_dir = Path(tempfile.mkdtemp(prefix="vulkan-loader-"))
        shutil.copy2(out / VULKAN_LOADER, loader_dir / VULKAN_LOADER)
        env["LD_LIBRARY_PATH"] = f"{loader_dir}:{env.get('LD_LIBRARY_PATH', '')}"
        notes.append(f"no {VULKAN_LOADER} on the machine: used the carried Vulkan loader")
    if device == "gpu" and not any(any(d.glob("nvidia*.json")) for d in icd_dirs if d.is_dir()):
        glx = _find_lib("libGLX_nvidia.so.0", libs)
        if glx is None:
            raise SystemExit("vulkan_gpu_check: no NVIDIA Vulkan driver on this machine (no nvidia_icd.json and no "
                             "libGLX_nvidia.so.0): its driver was installed without graphics/Vulkan (in a container: "
                             "NVIDIA_DRIVER_CAPABILITIES lacks 'graphics')")
        icd = Path(tempfile.mkdtemp(prefix="vulkan-icd-")) / "nvidia_icd.json"
        icd.write_text(json.dumps({"file_format_version": "1.0.0",
                                   "ICD": {"library_path": glx, "api_version": "1.3.0"}}))
        env["VK_ICD_FILENAMES"] = env["VK_DRIVER_FILES"] = str(icd)
        notes.append(f"no nvidia_icd.json: pointed the Vulkan loader at {glx}")
    return env, notes


def run(args) -> int:
    out = Path(args.out).absolute()
    expected = json.loads((out / "expected.json").read_text())
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "gpu": _gpu_name(),
              "model": expected["model"], "quant": expected["quant"], "bench": " ".join(BENCH)}
    t0 = time.time()
    bundles = {name: out / name for name in ("vulkan", "cuda") if (out / name).is_dir()}
    if result["gpu"] is None and "cuda" in bundles:
        result["cuda"] = {"skipped": "no NVIDIA GPU (nvidia-smi)"}
        del bundles["cuda"]
    filled = None
    for name, bundle in bundles.items():
        result.setdefault("fill_s", {})[name] = round(fill_bundle(bundle, like=filled), 1)
        filled = bundle

    vk = {}
    try:
        env, vk["notes"] = vulkan_env(out, args.device)
        t = time.time()
        got, report = _generate(bundles["vulkan"], expected["prompt_ids"], env)
        vk["first_start_s"] = round(time.time() - t, 1)  # pipelines built by the driver here
        vk["adapter"], vk["pipelines"] = report["adapter"], report["pipelines"]
        vk["tokens_equal"] = got["output_ids"] == expected["host_output_ids"]
        vk["output_ids"] = got["output_ids"]
        vk["logits"] = compare_logits(_logits(bundles["vulkan"], expected["logit_tokens"], env),
                                      expected["host_logits_f32le_b64"])
        vk.update(_tok_s(_bench(bundles["vulkan"], env)))
    except (RuntimeError, StopIteration, KeyError, SystemExit) as err:
        vk["error"] = str(err)
    result["vulkan"] = vk
    if "cuda" in bundles:
        cuda = {}
        try:
            got, _ = _generate(bundles["cuda"], expected["prompt_ids"])
            cuda["tokens_equal"] = got["output_ids"] == expected["host_output_ids"]
            cuda.update(_tok_s(_bench(bundles["cuda"])))
        except (RuntimeError, StopIteration) as err:
            cuda["error"] = str(err)
        result["cuda"] = cuda
    result["host_output_ids"] = expected["host_output_ids"]
    result["wall_s"] = round(time.time() - t0, 1)
    result_path = Path(args.result) if args.result else out / "result.json"
    result_path.write_text(json.dumps(result, indent=1) + "\n")

    ok = bool(vk.get("tokens_equal")) and vk["logits"]["max_abs_diff"] <= MAX_LOGIT_DIFF
    adapter = vk.get("adapter") or {}
    print("| bundle | device | tokens = host | max logit diff | prefill tok/s | decode tok/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in (("vulkan", vk), ("cuda", result.get("cuda", {}))):
        if "error" in r or "skipped" in r:
            print(f"| {name} | | {r.get('error') or r.get('skipped')} | | | |")
        elif "decode_tok_s" in r:
            where = f"{adapter.get('name')} ({adapter.get('backend')}, {adapter.get('driver')})" if name == "vulkan" \
                else result["gpu"]
            diff = f"{r['logits']['max_abs_diff']:.2e}" if "logits" in r else ""
            print(f"| {name} | {where} | {r['tokens_equal']} | {diff} | {r['prefill_tok_s']:.1f} ± "
                  f"{r['prefill_tok_s_std']:.1f} | {r['decode_tok_s']:.1f} ± {r['decode_tok_s_std']:.1f} |")
    print(f"result: {result_path} ({'PASSED' if ok else 'FAILED'}, {result['wall_s']} s)")
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)
    a = sub.add_parser("prepare", help="here: bundles, reference tokens and logits, the carry folder")
    a.add_argument("--model", default="random:phi-3-mini-4k")
    a.add_argument("--out", default="dist/vulkan-gpu-check")
    a.add_argument("--no-cuda", action="store_true", help="no CUDA bundle (a machine without the CUDA toolkit)")
    b = sub.add_parser("run", help="on the GPU machine: fill, run, compare, time; writes OUT/result.json")
    b.add_argument("--out", default="dist/vulkan-gpu-check")
    b.add_argument("--result", help="where to write result.json (default OUT/result.json; on a lent machine $OUT/...)")
    b.add_argument("--device", choices=["gpu", "any"], default="gpu",
                   help="gpu (default): a GPU adapter or fail; any: what there is (lavapipe on a CPU machine)")
    args = p.parse_args()
    if args.step == "run" and args.device == "any":
        args.device = "auto"
    return prepare(args) if args.step == "prepare" else run(args)


if __name__ == "__main__":
    sys.exit(main())
