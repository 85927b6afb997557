"""The OpenCL GPU check: full-size Phi-3-mini through NVIDIA's OpenCL with our OpenCL runtime, its
greedy tokens and logits against the host's, its tok/s beside the CUDA bundle's in the same run.

Two steps, because the GPU machine has neither TVM nor edgesmith (it needs neither):

  python bench/opencl_gpu_check.py prepare [--model random:phi-3-mini-4k] [--out dist/opencl-gpu-check]
      here: compiles the model at q4f32 for `linux-opencl`, `cuda` and `host` into OUT-bundles/;
      fills all three with the same weights (below); runs the host bundle for the reference greedy
      tokens and logits; leaves in OUT (the folder to carry, ~23 MiB for the full model) the
      OpenCL and CUDA bundles without their weight shards (2.3 GB each, too big to carry),
      libOpenCL.so.1 (the ICD loader, for a machine without one) and expected.json.

  python3 bench/opencl_gpu_check.py run [--out dist/opencl-gpu-check]
      on the GPU machine (python3's standard library, the NVIDIA driver; nvcc for the CUDA
      bundle): fills the two bundles' weights again, points the ICD loader at NVIDIA's OpenCL
      (its own /etc/OpenCL/vendors/nvidia.icd, else libnvidia-opencl.so.1 found on the machine;
      the carried libOpenCL.so.1 when the machine has no loader), runs the OpenCL bundle on the
      GPU (EDGESMITH_OPENCL_DEVICE=gpu: never PoCL by accident) and then the CUDA bundle, and
      writes OUT/result.json: tokens equal?, max |logit diff|, prefill / decode tok/s of both.
      `--device any` lets it run on whatever OpenCL device there is (PoCL here: how the script
      itself is tested on a CPU machine; the CUDA part is then skipped).

Weights: every parameter's bytes come from SHAKE-256 of its name (hashlib: the same on every
machine and Python), shaped into what a q4f32 parameter holds: packed int4 weights (any 32 bits),
scales of either sign in [2^-9, 2^-8) (about 1 / sqrt(21 K): activations keep their scale through
a K-wide int4 dot product; the sign cancels the int4 values' -0.5 mean, which with positive
scales pushes every layer the same way until one token wins every step) and norm weights in
[1, 2). The shards, their md5 in tensor-cache.json and the manifest's sha256 and size of each are
rewritten, so the runner verifies the bundle as usual (the CUDA bundle's shards, laid out the
same, are hard links to the OpenCL bundle's).

On a lent machine (the `run` tool; carry the prepared folder, write the result under $OUT):
  python3 bench/opencl_gpu_check.py run --out dist/opencl-gpu-check --result $OUT/opencl_gpu_check.json
Budget, full model: filling 2.3 GB (~40 s on this 2-core VM, single-threaded), NVIDIA's OpenCL
compile of ~25 kernels and nvcc's of the CUDA ones (under a minute each, the OpenCL binaries then
cached), seven runner starts (the first verifies 2.3 GB of sha256): about 3-4 minutes.
"""
from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/NAME.py`: import siblings as bench.NAME from the
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # repo root; bench/ itself never on sys.path
from bench.gpu_runner import run_runner  # noqa: E402  (stdlib only: it runs on the GPU machine)

PROMPT = [1, 450, 4996, 17354, 1701, 432, 3681, 29892]  # fixed ids (reduced modulo the vocab)
NEW_TOKENS = 32
LOGIT_TOKENS = PROMPT + [1576, 4799, 338, 263]  # teacher-forced: 12 positions of logits
BENCH = ["-p", "128", "-n", "64", "--warmup", "1", "-r", "3"]
SALT = b"edgesmith-opencl-gpu-check-v1:"
MAX_LOGIT_DIFF = 1e-3  # q4f32 on two devices: float rounding; the CPU-vs-PoCL tests see ~2e-5
ICD_LOADER = "libOpenCL.so.1"

# ------------------------------------------------------------------ weights from names


def _map_bytes(raw: bytearray, width: int, index: int, fn) -> None:
    """Byte `index` of every `width`-byte element through fn (slice assignment + translate: C speed)."""
    raw[index::width] = raw[index::width].translate(bytes(fn(b) for b in range(256)))


def param_bytes(name: str, dtype: str, nbytes: int) -> bytes:
    raw = bytearray(hashlib.shake_256(SALT + name.encode()).digest(nbytes))
    norm = name.endswith("norm.weight")
    if dtype == "uint32":  # packed int4 weights: any 32 bits are 8 valid nibbles
        pass
    elif dtype == "float32":  # little-endian sign|exponent(8)|mantissa(23): byte 3 = s eeeeeee, byte 2 = e mmmmmmm
        # norms [1, 2): exponent 127 -> 0x3F, 1mmmmmmm; scales +-[2^-9, 2^-8): exponent 118 -> s0111011, 0mmmmmmm
        _map_bytes(raw, 4, 3, lambda b: 0x3F if norm else (b & 0x80) | 0x3B)
        _map_bytes(raw, 4, 2, lambda b: (b & 0x7F) | (0x80 if norm else 0x00))
    elif dtype == "float16":  # sign|exponent(5)|mantissa(10): byte 1 = s eeeee mm
        # norms [1, 2): exponent 15 -> 0x3C | mm; scales +-[2^-9, 2^-8): exponent 6 -> s | 0x18 | mm
        _map_bytes(raw, 2, 1, lambda b: ((b & 0x03) | 0x3C) if norm else ((b & 0x83) | 0x18))
    else:
        raise SystemExit(f"opencl_gpu_check: parameter {name} has dtype {dtype}; this check fills uint32, float32 "
                         "and float16 only (a q4f32 or q4f16 bundle)")
    return bytes(raw)


def _layout(cache: dict) -> list:
    return [{k: v for k, v in shard.items() if k != "md5sum"} for shard in cache["records"]]


def fill_bundle(bundle: Path, like: Path | None = None) -> float:
    """Write every weight shard of `bundle` from the parameter names; update the md5 in
    tensor-cache.json and the sha256/size of each rewritten file in the manifest. `like`: a bundle
    filled already whose shards have the same layout: hard-linked (or copied) instead. Seconds."""
    t0 = time.time()
    params = bundle / "params"
    cache = json.loads((params / "tensor-cache.json").read_text())
    manifest = json.loads((bundle / "manifest.json").read_text())
    if like is not None:
        other = json.loads((like / "params" / "tensor-cache.json").read_text())
        if _layout(other) != _layout(cache):
            like = None
    for shard in cache["records"]:
        path = params / shard["dataPath"]
        if like is not None:  # same layout, same names: the same bytes
            path.unlink(missing_ok=True)
            try:
                os.link(like / "params" / shard["dataPath"], path)
            except OSError:
                shutil.copy2(like / "params" / shard["dataPath"], path)
            data = path.read_bytes()
            shard["md5sum"] = hashlib.md5(data).hexdigest()
            manifest["files"][f"params/{shard['dataPath']}"] = {"sha256": hashlib.sha256(data).hexdigest(),
                                                                 "size": len(data)}
            continue
        data = bytearray(shard["nbytes"])
        for rec in shard["records"]:
            if rec.get("format", "raw") != "raw":
                raise SystemExit(f"opencl_gpu_check: {rec['name']} is stored as {rec['format']}; expected raw")
            off = rec["byteOffset"]
            data[off:off + rec["nbytes"]] = param_bytes(rec["name"], rec["dtype"], rec["nbytes"])
        tmp = path.with_suffix(".bin.part")
        tmp.write_bytes(data)
        tmp.replace(path)
        shard["md5sum"] = hashlib.md5(data).hexdigest()
        manifest["files"][f"params/{shard['dataPath']}"] = {"sha256": hashlib.sha256(data).hexdigest(),
                                                             "size": len(data)}
    text = json.dumps(cache)
    (params / "tensor-cache.json").write_text(text)
    manifest["files"]["params/tensor-cache.json"] = {"sha256": hashlib.sha256(text.encode()).hexdigest(),
                                                     "size": len(text.encode())}
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return time.time() - t0


def strip_weights(bundle: Path, dest: Path) -> None:
    """`bundle` without its weight shards (fill_bundle writes them again)."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(bundle, dest, ignore=shutil.ignore_patterns("params_shard_*.bin"))


# ------------------------------------------------------------------ the runner


def _runner(bundle: Path, args: list[str], env: dict | None = None, timeout: float = 600) -> list[dict]:
    return run_runner(bundle, args, env=env, timeout=timeout)


def _generate(bundle: Path, prompt: list[int], env=None, verify=True) -> tuple[dict, dict | None]:
    lines = _runner(bundle, ["generate", "--tokens", ",".join(map(str, prompt)), "-n", str(NEW_TOKENS)]
                    + ([] if verify else ["--no-verify"]), env)
    out = next(l for l in lines if "output_ids" in l)
    return out, next((l["opencl"] for l in lines if "opencl" in l), None)


def _logits(bundle: Path, tokens: list[int], env=None) -> list[str]:
    lines = _runner(bundle, ["logits", "--tokens", ",".join(map(str, tokens)), "--no-verify"], env)
    return [l["logits_f32le_b64"] for l in sorted((l for l in lines if "logits_f32le_b64" in l),
                                                  key=lambda l: l["position"])]


def _bench(bundle: Path, env=None) -> dict:
    lines = _runner(bundle, ["bench", *BENCH, "--no-verify"], env)
    return next(l for l in lines if l.get("summary"))


def _floats(b64: str) -> array:
    a = array("f")
    a.frombytes(base64.b64decode(b64))
    if sys.byteorder != "little":
        a.byteswap()
    return a


def _argmax(a: array) -> int:
    return max(range(len(a)), key=a.__getitem__)


def compare_logits(got: list[str], want: list[str]) -> dict:
    diffs, top1 = [], 0
    for g, w in zip(got, want):
        ga, wa = _floats(g), _floats(w)
        diffs.append(max(abs(x - y) for x, y in zip(ga, wa)))
        top1 += _argmax(ga) == _argmax(wa)
    return {"positions": len(want), "max_abs_diff": max(diffs), "per_position": diffs, "top1_agree": top1}


# ------------------------------------------------------------------ prepare (here)


def _same_build(bundle: Path, model: str, target: str) -> bool:
    try:
        m = json.loads((bundle / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return m["target"]["preset"] == target and m["quant"] == "q4f32" and m["model"]["source"].startswith(model + " (")


def prepare_bundles(args, gpu: str, preset: str, loader: str, loader_what: str, script: str) -> int:
    """The carry folder of a GPU check (this script's and bench/vulkan_gpu_check.py's): host, `preset`
    (as `gpu`) and CUDA bundles at q4f32 with weights from the parameter names, the host's greedy
    tokens and logits as expected.json, the GPU bundles without weights, and this machine's `loader`."""
    from edgesmith.compiler.build import compile_bundle

    out = Path(args.out)
    work = Path(str(out) + "-bundles")  # the full bundles: not carried
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    built = {}
    for name, target in (("host", "host"), (gpu, preset), ("cuda", "cuda")):
        if name == "cuda" and args.no_cuda:
            continue
        dest = work / name
        if _same_build(dest, args.model, target):  # weights are rewritten below anyway
            built[name] = dest
            continue
        built[name] = compile_bundle(args.model, "q4f32", target, dest)
        print(f"compiled {args.model} q4f32 for {target}: {time.time() - t0:.0f} s", flush=True)
    for name, bundle in built.items():
        print(f"filled {name} weights in {fill_bundle(bundle):.1f} s", flush=True)
    host = built["host"]
    vocab = json.loads((host / "manifest.json").read_text())["model"]["config"]["vocab_size"]
    prompt, logit_tokens = [t % vocab for t in PROMPT], [t % vocab for t in LOGIT_TOKENS]
    ref, _ = _generate(host, prompt)
    logits = _logits(host, logit_tokens)
    print(f"host greedy tokens: {ref['output_ids']}")
    for name in (gpu, "cuda"):
        if name in built:
            strip_weights(built[name], out / name)
    for src in (f"/usr/lib/x86_64-linux-gnu/{loader}", f"/usr/lib64/{loader}"):
        if Path(src).exists():
            shutil.copy2(Path(src).resolve(), out / loader)  # the real file, not the symlink
            break
    (out / "expected.json").write_text(json.dumps({
        "model": args.model, "quant": "q4f32", "prompt_ids": prompt, "new_tokens": NEW_TOKENS,
        "host_output_ids": ref["output_ids"], "logit_tokens": logit_tokens, "host_logits_f32le_b64": logits,
        "weights": "SHAKE-256 of each parameter name, salted " + SALT.decode(),
        "prepared": datetime.datetime.now().isoformat(timespec="seconds"),
    }))
    carry = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"ready: {out} ({carry / 2**20:.1f} MiB: bundles without weights, expected.json, {loader_what}) to "
          f"carry; {work} stays here. On the GPU machine: python3 {script} run --out {out}")
    return 0


def prepare(args) -> int:
    return prepare_bundles(args, "opencl", "linux-opencl", ICD_LOADER, "the ICD loader", "bench/opencl_gpu_check.py")


# ------------------------------------------------------------------ run (on the GPU machine)


def _ldconfig_paths() -> dict[str, str]:
    try:
        done = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found = {}
    for line in done.stdout.splitlines():
        if "=>" in line and "x86-64" in line:
            name, path = line.split("=>")[0].split()[0], line.split("=>")[1].strip()
            found.setdefault(name, path)
    return found


def _find_lib(name: str, libs: dict[str, str]) -> str | None:
    if name in libs:
        return libs[name]
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/local/nvidia/lib64", "/usr/lib/wsl/lib", "/usr/lib"):
        if (Path(d) / name).exists():
            return str(Path(d) / name)
    return None


def opencl_env(out: Path, device: str, vendors_dir: Path = Path("/etc/OpenCL/vendors")) -> tuple[dict, list[str]]:
    """The environment that makes our plug-in reach NVIDIA's OpenCL; notes on what was needed."""
    env = dict(os.environ, EDGESMITH_OPENCL_DEVICE=device,
               EDGESMITH_OPENCL_CACHE=str(out / "opencl-programs"))
    notes = []
    libs = _ldconfig_paths()
    if _find_lib(ICD_LOADER, libs) is None:
        carried = out / ICD_LOADER
        if not carried.exists():
            raise SystemExit("opencl_gpu_check: this machine has no libOpenCL.so.1 and none was carried")
        env["EDGESMITH_OPENCL_LIBRARY"] = str(carried)
        notes.append(f"no {ICD_LOADER} on the machine: used the carried ICD loader")
    if device == "gpu" and not any(vendors_dir.glob("nvidia*.icd")):
        nvidia = _find_lib("libnvidia-opencl.so.1", libs)
        if nvidia is None:
            raise SystemExit("opencl_gpu_check: no NVIDIA OpenCL on this machine (no /etc/OpenCL/vendors/nvidia.icd "
                             "and no libnvidia-opencl.so.1): its driver was installed without OpenCL")
        vendors = Path(tempfile.mkdtemp(prefix="opencl-vendors-"))
        (vendors / "nvidia.icd").write_text(nvidia + "\n")
        env["OCL_ICD_VENDORS"] = str(vendors)
        notes.append(f"no nvidia.icd: pointed the ICD loader at {nvidia}")
    return env, notes


def _gpu_name() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def _tok_s(bench: dict, bundle: Path | None = None) -> dict:
    """tok/s of a bench summary, and the kernels a decoded token launched: counted by the runner's
    OpenCL/WebGPU plug-in, else (CUDA) as the compiler derived them (the manifest), said which."""
    out = {k: bench[k] for k in ("prefill_tok_s", "prefill_tok_s_std", "decode_tok_s", "decode_tok_s_std")}
    if bench.get("decode_launches") is not None:
        out["kernels_per_token"], out["kernels_counted"] = bench["decode_launches"] / bench["gen_tokens"], "measured"
    elif bundle is not None:
        launches = (json.loads((bundle / "manifest.json").read_text()).get("kernels") or {}).get("decode_launches")
        if launches:
            out["kernels_per_token"], out["kernels_counted"] = launches["total"], "derived"
    return out


def run(args) -> int:
    out = Path(args.out).absolute()
    expected = json.loads((out / "expected.json").read_text())
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "gpu": _gpu_name(),
              "model": expected["model"], "quant": expected["quant"], "bench": " ".join(BENCH)}
    t0 = time.time()
    bundles = {name: out / name for name in ("opencl", "cuda") if (out / name).is_dir()}
    if result["gpu"] is None and "cuda" in bundles:
        result["cuda"] = {"skipped": "no NVIDIA GPU (nvidia-smi)"}
        del bundles["cuda"]
    filled = None
    for name, bundle in bundles.items():
        result.setdefault("fill_s", {})[name] = round(fill_bundle(bundle, like=filled), 1)
        filled = bundle

    env, notes = opencl_env(out, args.device)
    ocl = {"notes": notes}
    try:
        t = time.time()
        got, report = _generate(bundles["opencl"], expected["prompt_ids"], env)
        ocl["first_start_s"] = round(time.time() - t, 1)  # kernels built by the driver here
        ocl["device"], ocl["programs"] = report["device"], report["programs"]
        ocl["tokens_equal"] = got["output_ids"] == expected["host_output_ids"]
        ocl["output_ids"] = got["output_ids"]
        ocl["logits"] = compare_logits(_logits(bundles["opencl"], expected["logit_tokens"], env),
                                       expected["host_logits_f32le_b64"])
        ocl.update(_tok_s(_bench(bundles["opencl"], env), bundles["opencl"]))
    except (RuntimeError, StopIteration, KeyError) as err:
        ocl["error"] = str(err)
    result["opencl"] = ocl
    if "cuda" in bundles:
        cuda = {}
        try:
            got, _ = _generate(bundles["cuda"], expected["prompt_ids"])
            cuda["tokens_equal"] = got["output_ids"] == expected["host_output_ids"]
            cuda.update(_tok_s(_bench(bundles["cuda"]), bundles["cuda"]))
        except (RuntimeError, StopIteration) as err:
            cuda["error"] = str(err)
        result["cuda"] = cuda
    result["host_output_ids"] = expected["host_output_ids"]
    result["wall_s"] = round(time.time() - t0, 1)
    result_path = Path(args.result) if args.result else out / "result.json"
    result_path.write_text(json.dumps(result, indent=1) + "\n")

    ok = ocl.get("tokens_equal") and ocl["logits"]["max_abs_diff"] <= MAX_LOGIT_DIFF
    dev = ocl.get("device") or {}
    print(f"| bundle | device | tokens = host | max logit diff | prefill tok/s | decode tok/s | kernels/token |")
    print(f"| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in (("opencl", ocl), ("cuda", result.get("cuda", {}))):
        if "error" in r or "skipped" in r:
            print(f"| {name} | | {r.get('error') or r.get('skipped')} | | | | |")
        elif "decode_tok_s" in r:
            where = f"{dev.get('device')} ({dev.get('platform')} {dev.get('driver')})" if name == "opencl" else \
                result["gpu"]
            diff = f"{r['logits']['max_abs_diff']:.2e}" if "logits" in r else ""
            kernels = f"{r['kernels_per_token']:g} ({r['kernels_counted']})" if "kernels_per_token" in r else ""
            print(f"| {name} | {where} | {r['tokens_equal']} | {diff} | {r['prefill_tok_s']:.1f} ± "
                  f"{r['prefill_tok_s_std']:.1f} | {r['decode_tok_s']:.1f} ± {r['decode_tok_s_std']:.1f} | {kernels} |")
    print(f"result: {result_path} ({'PASSED' if ok else 'FAILED'}, {result['wall_s']} s)")
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)
    a = sub.add_parser("prepare", help="here: bundles, reference tokens and logits, the carry folder")
    a.add_argument("--model", default="random:phi-3-mini-4k")
    a.add_argument("--out", default="dist/opencl-gpu-check")
    a.add_argument("--no-cuda", action="store_true", help="no CUDA bundle (a machine without the CUDA toolkit)")
    b = sub.add_parser("run", help="on the GPU machine: fill, run, compare, time; writes OUT/result.json")
    b.add_argument("--out", default="dist/opencl-gpu-check")
    b.add_argument("--result", help="where to write result.json (default OUT/result.json; on a lent machine $OUT/...)")
    b.add_argument("--device", choices=["gpu", "any"], default="gpu",
                   help="gpu (default): NVIDIA's OpenCL or fail; any: what there is (PoCL on a CPU machine)")
    args = p.parse_args()
    if args.step == "run" and args.device == "any":
        args.device = "auto"
    return prepare(args) if args.step == "prepare" else run(args)


if __name__ == "__main__":
    sys.exit(main())
