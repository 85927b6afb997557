"""llama.cpp, ONNX Runtime GenAI and edgesmith side by side on this host: same weights, same prompt.

    python bench/peers.py [--layers 4] [-p 128] [-n 128] [-r 2] [--rounds 3] [-t 2]
                          [--engines llama.cpp,ort-genai,edgesmith-q4f16i8,edgesmith-q4f16,edgesmith-q4f32]
                          [--no-install] [--rebuild] [--out bench/out/peers.json]

One Hugging Face folder (bench/peer_model.py: Phi-3-mini-4k dimensions, `layers` layers, random
fp16 weights) is what every engine is built from, under bench/models/ (cached; --rebuild redoes it):
  llama.cpp        llama-cpp-python compiled from the registry's sdist (GGML_NATIVE); the sdist's
                   own convert_hf_to_gguf.py (with its vendored gguf-py) -> GGUF f16 -> Q4_0 through
                   llama_cpp.llama_model_quantize
  ort-genai        onnxruntime-genai's model builder, -p int4 -e cpu
  edgesmith-q4*    `edgesmith compile FOLDER --quant q4f16i8|q4f16|q4f32`, measured by `edgesmith
                   profile` (the C++ runner)
Each engine runs in its own process (peak RSS is that process tree's, from wait4), a warm-up
generation first, then r repetitions of (prefill of p fixed token ids, n greedy decode steps).
That is one round; the engines take turns, round after round, so that a slow spell of this
shared machine falls on all of them. tok/s are medians over all rounds' samples, and the ratios
printed under the table are edgesmith's medians over each peer's from this one run. An engine
that cannot be installed, built or run keeps its row, with why.

Decode as % of ceiling: read bandwidth is measured here with `threads` threads (the runner's
probe, `runner membw`: what `edgesmith profile` measures its ceiling with), and the bytes one
decode step must read are counted the same way for every engine, from its own files: all weights
but the token-embedding table (one row of it), plus the KV cache at the average position p + n/2
in the engine's KV dtype.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/NAME.py`: import siblings as bench.NAME from the
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # repo root; bench/ itself never on sys.path
from bench.common import cached_bundle, extract_llama_sdist, read_bandwidth_gbs, table, write_json  # noqa: E402

HERE = Path(__file__).resolve().parent
MODELS = HERE / "models"
# This host's own ISA but no AMX: the VM advertises AMX and llama.cpp's AMX path dies on the first
# `tilezero` (SIGILL), so -march=native (GGML_NATIVE) is replaced by the same flags minus AMX.
LLAMA_CMAKE_ARGS = " ".join([
    "-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_BMI2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
    "-DGGML_AVX_VNNI=ON", "-DGGML_AVX512=ON", "-DGGML_AVX512_VBMI=ON", "-DGGML_AVX512_VNNI=ON",
    "-DGGML_AVX512_BF16=ON", "-DLLAVA_BUILD=OFF", "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_CURL=OFF"])


class Skip(Exception):
    """An engine that cannot run here; the message goes into its table row."""


def sh(cmd: list[str], *, env: dict | None = None, timeout: float = 3600, what: str = "") -> str:
    """Run a command; on failure raise Skip with the tail of its own output."""
    p = subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        tail = " | ".join(line.strip() for line in (p.stdout + p.stderr).strip().splitlines()[-4:])
        raise Skip(f"{what or cmd[0]} failed (exit {p.returncode}): {tail[-400:]}")
    return p.stdout


def importable(module: str) -> bool:
    # In a child: onnxruntime_genai aborts the process when it cannot load onnxruntime.
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0


def ensure(module: str, pip_args: list[str], install: bool, env: dict | None = None, note: str = "") -> None:
    if importable(module):
        return
    if not install:
        raise Skip(f"`{module}` is not installed (--no-install): pip install {' '.join(pip_args)}")
    print(f"installing {' '.join(pip_args)} {note}", file=sys.stderr)
    sh([sys.executable, "-m", "pip", "install", "-q", *pip_args], env=env, what=f"pip install {pip_args[-1]}")
    if not importable(module):
        raise Skip(f"`{module}` still does not import after pip install {' '.join(pip_args)}")


# ---------------------------------------------------------------- read bandwidth


def read_bandwidth(threads: int) -> tuple[float, str]:
    """(GB/s, how) on `threads` threads: the runner's probe (bench/common.read_bandwidth_gbs)."""
    return read_bandwidth_gbs(threads)


# ---------------------------------------------------------------- engines


@dataclass
class Built:
    path: Path           # what the worker loads
    weight_bytes: int    # bytes a decode step reads from the weights (embedding table: one row)
    kv_elem_bytes: int   # the engine's KV cache dtype size
    note: str = ""


def kv_bytes_per_token(cfg: dict, elem: int, prompt: int, gen: int) -> float:
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    per_position = 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * head_dim * elem
    return per_position * (prompt + gen / 2)


def build_llama(hf: Path, args) -> Built:
    env = {"CMAKE_ARGS": LLAMA_CMAKE_ARGS, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
    # --no-cache-dir: pip's wheel cache ignores CMAKE_ARGS and would hand back any earlier build.
    ensure("llama_cpp", ["--no-cache-dir", "--no-binary", "llama-cpp-python", "llama-cpp-python"], args.install, env,
           "(compiles llama.cpp from the sdist: minutes)")
    out = MODELS / "llama.cpp"
    q4 = out / "model-Q4_0.gguf"
    if args.rebuild or not q4.exists():
        out.mkdir(parents=True, exist_ok=True)
        version = sh([sys.executable, "-c", "import llama_cpp; print(llama_cpp.__version__)"]).strip()
        src = _llama_sdist(version, out)
        f16 = out / "model-f16.gguf"
        sh([sys.executable, str(src / "convert_hf_to_gguf.py"), str(hf), "--outtype", "f16", "--outfile", str(f16)],
           env={"PYTHONPATH": str(src / "gguf-py")}, what="convert_hf_to_gguf.py")
        sh([sys.executable, __file__, "--worker", "llama-quantize", "--artifact", str(f16), "--to", str(q4),
            "-t", str(args.threads)], what="llama_model_quantize")
        f16.unlink()
    from gguf import GGUFReader  # the installed gguf (an edgesmith dependency), not the sdist's copy

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(q4)).tensors}
    emb = tensors.pop("token_embd.weight")
    return Built(q4, sum(tensors.values()) + emb // args.cfg["vocab_size"], 2,
                 "Q4_0 (llama_model_quantize's default keeps output.weight at Q6_K)")


def _llama_sdist(version: str | None, out: Path) -> Path:
    """The sdist's vendored llama.cpp tree (convert script + gguf-py): the wheel does not ship them."""
    src = out / "src"
    if (src / ".complete").exists() or version is None:
        return src
    shutil.rmtree(src, ignore_errors=True)
    return extract_llama_sdist(sh, version, out / "sdist", src, ("convert_hf_to_gguf.py", "conversion/", "gguf-py/"))


def build_ort(hf: Path, args) -> Built:
    ensure("onnxruntime_genai", ["onnxruntime-genai"], args.install)
    ensure("onnx_ir", ["onnx", "onnx-ir"], args.install, note="(the model builder needs them)")
    out = MODELS / "ort-genai-int4"
    if args.rebuild or not (out / "genai_config.json").exists():
        shutil.rmtree(out, ignore_errors=True)
        sh([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out), "-p", "int4",
            "-e", "cpu", "-c", str(MODELS / "ort-cache")], what="onnxruntime_genai.models.builder")
    import onnx

    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    sizes = {}
    for init in model.graph.initializer:
        ext = {e.key: e.value for e in init.external_data}
        sizes[init.name] = int(ext["length"]) if "length" in ext else len(init.raw_data) or _dense_bytes(init)
    emb = sum(b for name, b in sizes.items() if "embed_tokens" in name)
    weights = sum(sizes.values()) - emb + emb // args.cfg["vocab_size"]
    kv = next((i for i in model.graph.input if i.name.startswith("past_key_values")), None)
    elem = {1: 4, 10: 2, 16: 2}.get(kv.type.tensor_type.elem_type, 4) if kv is not None else 4
    return Built(out, weights, elem, "builder's int4 (MatMulNBits, block 32)")


def _dense_bytes(init) -> int:
    import numpy as np
    from onnx import helper

    return int(np.prod(init.dims)) * helper.tensor_dtype_to_np_dtype(init.data_type).itemsize


def build_edgesmith(quant: str):
    def build(hf: Path, args) -> Built:
        out = cached_bundle(str(hf), quant, rebuild=args.rebuild)  # the package's bundle cache
        # The profiler counts bytes per token itself (same definition); its number is used.
        return Built(out, 0, 2 if "f16" in quant else 4, "`edgesmith profile` (C++ runner)")
    return build


ENGINES = {
    "llama.cpp": build_llama,
    "ort-genai": build_ort,
    "edgesmith-q4f16i8": build_edgesmith("q4f16i8"),
    "edgesmith-q4f16": build_edgesmith("q4f16"),
    "edgesmith-q4f32": build_edgesmith("q4f32"),
}


# ---------------------------------------------------------------- measuring (one process per engine)


def run_child(cmd: list[str], timeout: float) -> tuple[str, int]:
    """(stdout, peak RSS bytes of the whole process tree) — wait4 reports the child's and its children's."""
    log = MODELS / "child.out"
    with open(log, "w") as fo, open(MODELS / "child.err", "w") as fe:
        try:
            p = subprocess.Popen(cmd, stdout=fo, stderr=fe)
        except OSError as e:
            raise Skip(f"could not start {cmd[0]}: {e.strerror}") from None
        deadline = time.time() + timeout
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.time() > deadline:
                p.kill()
                os.wait4(p.pid, 0)
                raise Skip(f"timed out after {timeout:.0f} s")
            time.sleep(0.2)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        tail = " | ".join((MODELS / "child.err").read_text().strip().splitlines()[-3:])
        if p.returncode == -4:
            tail = "illegal instruction (SIGILL): the build uses an ISA extension this CPU or VM does not run " + tail
        raise Skip(f"run failed (exit {p.returncode}): {tail[-400:]}")
    return log.read_text(), usage.ru_maxrss * 1024


def measure(name: str, built: Built, args) -> dict:
    p, n, r, t = args.prompt, args.new_tokens, args.reps, args.threads
    if name.startswith("edgesmith"):
        # this interpreter's edgesmith: the venv's, whether or not it is on PATH (not activated)
        out, rss = run_child([sys.executable, "-m", "edgesmith", "profile", str(built.path), "-p", str(p),
                              "-n", str(n), "-r", str(r), "--max-reps", str(r), "--warmup", "1", "-t", str(t),
                              "--kernels", "0", "--cool-below", "off", "--format", "json", "-q"], args.timeout)
        rec = json.loads(out)
        rec = rec[0] if isinstance(rec, list) else rec
        pre, dec = rec["pp"]["samples"], rec["tg"]["samples"]
        per_token = rec["roofline"]["bytes_per_token"]
        rss = rec["memory"].get("peak_rss_bytes") or rss  # the runner's own; the CLI around it is not the engine
    else:
        out, rss = run_child([sys.executable, __file__, "--worker", name, "--artifact", str(built.path),
                              "-p", str(p), "-n", str(n), "-r", str(r), "-t", str(t)], args.timeout)
        res = json.loads(out.strip().splitlines()[-1])
        pre, dec = res["prefill"], res["decode"]
        per_token = built.weight_bytes + kv_bytes_per_token(args.cfg, built.kv_elem_bytes, p, n)
    return {"prefill_samples": pre, "decode_samples": dec, "peak_rss_mb": rss / 2**20,
            "bytes_per_token": int(per_token)}


def summarize(res: dict, bandwidth: float) -> None:
    """Medians over every round's samples, and decode against the bandwidth ceiling."""
    decode = statistics.median(res["decode_samples"])
    ceiling = bandwidth * 1e9 / res["bytes_per_token"]
    res.update(prefill_tok_s=statistics.median(res["prefill_samples"]), decode_tok_s=decode,
               ceiling_tok_s=ceiling, roof_pct=100 * decode / ceiling)


def ratios(results: list[dict]) -> list[str]:
    """'edgesmith-x: decode 1.31x ort-genai, ...' for every edgesmith engine against every peer."""
    done = [r for r in results if r.get("error") is None and "decode_tok_s" in r]
    ours = [r for r in done if r["engine"].startswith("edgesmith")]
    peers = [r for r in done if not r["engine"].startswith("edgesmith")]
    lines = []
    for o in ours:
        parts = [f"prefill {o['prefill_tok_s'] / p['prefill_tok_s']:.2f}x, decode "
                 f"{o['decode_tok_s'] / p['decode_tok_s']:.2f}x {p['engine']}" for p in peers]
        o["ratios"] = {p["engine"]: {"prefill": o["prefill_tok_s"] / p["prefill_tok_s"],
                                     "decode": o["decode_tok_s"] / p["decode_tok_s"]} for p in peers}
        if parts:
            lines.append(f"{o['engine']}: " + "; ".join(parts))
    return lines


def prompt_ids(p: int) -> list[int]:
    """Fixed, ordinary token ids (no specials): the same prompt for every engine."""
    return [1] + [300 + (17 * i) % 30000 for i in range(p - 1)]


def worker_llama(path: str, p: int, n: int, reps: int, threads: int) -> dict:
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=p + n + 16, n_batch=512, n_ubatch=512, n_threads=threads,
                n_threads_batch=threads, verbose=False)
    ids = prompt_ids(p)
    pre, dec = [], []
    for rep in range(reps + 1):  # the first is the warm-up
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        t1 = time.perf_counter()
        for _ in range(n - 1):  # n tokens = the prefill's one + n-1 decode steps, as edgesmith counts
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        t2 = time.perf_counter()
        if rep:
            pre.append(p / (t1 - t0))
            dec.append((n - 1) / (t2 - t1))
    return {"prefill": pre, "decode": dec}


def worker_ort(path: str, p: int, n: int, reps: int, threads: int) -> dict:
    cfg_path = Path(path) / "genai_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = threads
    cfg_path.write_text(json.dumps(cfg, indent=4))
    import onnxruntime_genai as og

    model = og.Model(path)
    ids = prompt_ids(p)
    pre, dec = [], []
    for rep in range(reps + 1):
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=p + n, min_length=p + n)
        gen = og.Generator(model, params)
        t0 = time.perf_counter()
        gen.append_tokens(ids)  # runs the prefill
        t1 = time.perf_counter()
        for _ in range(n):  # the first only picks the prefill's token; n-1 decode steps
            gen.generate_next_token()
        t2 = time.perf_counter()
        del gen
        if rep:
            pre.append(p / (t1 - t0))
            dec.append((n - 1) / (t2 - t1))
    return {"prefill": pre, "decode": dec}


def worker_llama_quantize(src: str, dst: str, threads: int) -> None:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize returned {rc}")


def worker(args) -> None:
    if args.worker == "llama-quantize":
        return worker_llama_quantize(args.artifact, args.to, args.threads)
    fn = {"llama.cpp": worker_llama, "ort-genai": worker_ort}[args.worker]
    print(json.dumps(fn(args.artifact, args.prompt, args.new_tokens, args.reps, args.threads)))


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("-p", "--prompt", type=int, default=128)
    ap.add_argument("-n", "--new-tokens", type=int, default=128)
    ap.add_argument("-r", "--reps", type=int, default=2, help="repetitions per engine per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the engines take turns in each")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--no-install", dest="install", action="store_false", help="never pip install a missing peer")
    ap.add_argument("--rebuild", action="store_true", help="regenerate each engine's model files")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per engine measurement")
    ap.add_argument("--out", type=Path, default=HERE / "out" / "peers.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--artifact", help=argparse.SUPPRESS)
    ap.add_argument("--to", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    from bench.peer_model import write_checkpoint

    hf = write_checkpoint(MODELS / f"phi3-mini-4k-l{args.layers}", layers=args.layers)
    args.cfg = json.loads((hf / "config.json").read_text())
    rows, results, built_by_name = [], [], {}
    for name in args.engines.split(","):
        if name not in ENGINES:
            raise SystemExit(f"unknown engine {name!r}; known: {', '.join(ENGINES)}")
        t = time.perf_counter()
        try:
            built = built_by_name[name] = ENGINES[name](hf, args)
            print(f"{name}: ready in {time.perf_counter() - t:.0f} s", file=sys.stderr)
            results.append({"engine": name, "note": built.note, "weight_bytes": built.weight_bytes, "error": None})
        except (Skip, subprocess.TimeoutExpired, OSError) as e:
            results.append({"engine": name, "error": f"not built: {e}"})
            print(f"{name}: {results[-1]['error']}", file=sys.stderr)
    # Measured after every build, back to back, so they share the machine's state.
    args.bandwidth, bw_how = read_bandwidth(args.threads)
    print(f"read bandwidth {args.bandwidth:.1f} GB/s ({bw_how})", file=sys.stderr)
    for rnd in range(args.rounds):
        for res in results:
            if res["error"] is not None:
                continue
            try:
                got = measure(res["engine"], built_by_name[res["engine"]], args)
            except (Skip, KeyError, ValueError) as e:
                res["error"] = f"not measured: {e}"
                continue
            for key in ("prefill_samples", "decode_samples"):
                res[key] = res.get(key, []) + got.pop(key)
            res["peak_rss_mb"] = max(res.get("peak_rss_mb", 0), got.pop("peak_rss_mb"))
            res.update(got)
            print(f"round {rnd + 1}/{args.rounds} {res['engine']}: prefill "
                  f"{statistics.median(res['prefill_samples'][-args.reps:]):.1f} tok/s, decode "
                  f"{statistics.median(res['decode_samples'][-args.reps:]):.1f} tok/s", file=sys.stderr)
    for res in results:
        if res["error"] is None:
            summarize(res, args.bandwidth)
        rows.append({"engine": res["engine"], "prefill": res.get("prefill_tok_s"), "decode": res.get("decode_tok_s"),
                     "rss": f"{res['peak_rss_mb']:.0f} MiB" if "peak_rss_mb" in res else None,
                     "roof": f"{res['roof_pct']:.0f}%" if "roof_pct" in res else None,
                     "mb": res["bytes_per_token"] / 1e6 if "bytes_per_token" in res else None,
                     "note": res["error"] or res.get("note")})
    date = time.strftime("%Y-%m-%d")
    print(f"\n{date}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads; "
          f"Phi-3-mini-4k shape, {args.layers} layers, random fp16 weights (one folder for all); prompt "
          f"{args.prompt}, {args.new_tokens} new tokens; medians of {args.rounds * args.reps} samples ({args.rounds} rounds "
          f"taking turns, {args.reps} after a warm-up each); read bandwidth "
          f"{args.bandwidth:.1f} GB/s ({bw_how})\n")
    print(table(rows, [("engine", "engine"), ("prefill", "prefill tok/s"), ("decode", "decode tok/s"),
                       ("rss", "peak RSS"), ("mb", "MB read / token"), ("roof", "decode / bandwidth ceiling"),
                       ("note", "note")]))
    lines = ratios(results)
    if lines:
        print("\nratios, same run: " + "\n                   ".join(lines))
    write_json(args.out, {"date": date, "host": platform.node(), "cpu_count": os.cpu_count(),
                          "threads": args.threads, "layers": args.layers, "prompt": args.prompt,
                          "new_tokens": args.new_tokens, "reps": args.reps, "rounds": args.rounds, "read_bandwidth_gbs": args.bandwidth,
                          "bandwidth_method": bw_how, "command": " ".join(sys.argv), "results": results})


if __name__ == "__main__":
    main()
