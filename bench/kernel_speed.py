"""Single linear layers at Phi-3-mini shapes, scheduled as the compiler schedules them.

    python bench/kernel_speed.py [--only q4f32,q4f16,q0f32,q0f16] [--shapes decode,prefill]
                            [-m 128] [-r 7] [--residual] [--out bench/out/kernels.json]

Each kernel is the compiler's own tensor expression (compiler/kernels/cpu.py) with the compiler's
CPU schedule (compiler/lowering/schedules_cpu.py) applied. The model's int4 decode now uses the TIR GEMVs
(compiler/kernels/gemv.py, int8.py) wherever their shapes tile, so the int4 decode rows
here are the fallback expression; prefill (q4f16/q4f32) and float rows are what the model runs.
They are built for this host and timed with TVM's
time_evaluator (median of r repeats). Checked against numpy before it is timed. Prints ms,
the weight bytes read per ms (GB/s: what bounds decode) and GFLOP/s (what bounds prefill).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as `python bench/NAME.py`: import siblings as bench.NAME from the
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # repo root; bench/ itself never on sys.path
from bench.common import read_bandwidth_gbs, table, write_json  # noqa: E402

import tvm  # noqa: E402
from edgesmith.compiler.kernels import cpu as kernels  # noqa: E402
from edgesmith.compiler.lowering import schedules_cpu as schedules  # noqa: E402
from edgesmith.compiler.quantization.registry import dequantize_q4, get_quantization, quantize_q4  # noqa: E402
from edgesmith.targets import presets  # noqa: E402
from edgesmith.targets.tvm_api import te, tirx  # noqa: E402

# (name, k, n): Phi-3-mini's linears (hidden 3072, intermediate 8192, vocab 32064).
SHAPES = [("qkv", 3072, 9216), ("o", 3072, 3072), ("gate_up", 3072, 16384), ("down", 8192, 3072),
          ("lm_head", 3072, 32064)]


def build(quant: str, m: int, k: int, n: int, residual: bool, target, dump: bool = False):
    """(compiled function, numpy inputs, numpy reference) for one linear layer."""
    q = get_quantization(quant)
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((1, m, k)).astype("float32")
    w_float = (rng.standard_normal((n, k)) * 0.05).astype("float32")
    # Prefill's token count is dynamic in the model; decode's is the constant 1.
    m_dim = 1 if m == 1 else tirx.Var("seq_len", "int64")
    x = te.placeholder((1, m_dim, k), "float32", "x")
    if q.quantized:
        packed, scale = quantize_q4(w_float, q.group_size, q.storage_dtype)
        w = te.placeholder(packed.shape, "uint32", "w")
        s = te.placeholder(scale.shape, q.storage_dtype, "s")
        y = kernels.q4_linear(x, w, s, q.group_size)
        weights, inputs = [packed, scale], [x, w, s]
        w_ref = dequantize_q4(packed, scale, q.group_size)
    else:
        w_np = w_float.astype(q.storage_dtype)
        w = te.placeholder(w_np.shape, q.storage_dtype, "w")
        y = kernels.float_linear(x, w)
        weights, inputs = [w_np], [x, w]
        w_ref = w_np.astype("float32")
    ref = x_np[0] @ w_ref.T
    args = [x_np, *weights]
    if residual:
        r = te.placeholder((1, m_dim, n), "float32", "r")
        y = te.compute((1, m_dim, n), lambda i, j, o: y[i, j, o] + r[i, j, o], name="T_add")
        r_np = rng.standard_normal((1, m, n)).astype("float32")
        inputs.append(r)
        args.append(r_np)
        ref = ref + r_np[0]
    func = te.create_prim_func([*inputs, y]).with_attr("global_symbol", "main")
    mod = tvm.IRModule({"main": func})
    with target:
        mod = schedules.apply(target)(mod)
    if dump:
        print(mod.script(), file=sys.stderr)
    t = time.perf_counter()
    lib = tvm.compile(mod, target=target)
    return lib, args, ref, sum(a.nbytes for a in weights), time.perf_counter() - t


def run(quant, m, k, n, residual, target, reps):
    lib, args, ref, weight_bytes, compile_s = build(quant, m, k, n, residual, target)
    dev = tvm.cpu()
    tensors = [tvm.runtime.tensor(a, dev) for a in args] + [tvm.runtime.empty((1, m, n), "float32", dev)]
    f = lib.jit() if hasattr(lib, "jit") else lib
    f["main"](*tensors)
    got = tensors[-1].numpy()[0]
    err = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-6))
    if err > 1e-4:
        raise SystemExit(f"{quant} {m}x{k}->{n}: relative error {err:.2e} against numpy")
    timer = f.time_evaluator("main", dev, number=max(1, int(0.2 / max(_once(f, tensors), 1e-5))), repeat=reps)
    ms = float(np.median(timer(*tensors).results)) * 1e3
    return {"ms": ms, "gbs": weight_bytes / ms / 1e6, "gflops": 2 * m * k * n / ms / 1e6,
            "rel_err": err, "compile_s": compile_s, "weight_bytes": weight_bytes}


def _once(f, tensors) -> float:
    t = time.perf_counter()
    f["main"](*tensors)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="q4f32,q4f16,q0f32,q0f16")
    ap.add_argument("--shapes", default="decode,prefill")
    ap.add_argument("--layers", default=",".join(name for name, _, _ in SHAPES))
    ap.add_argument("-m", "--prefill-tokens", type=int, default=128)
    ap.add_argument("-r", "--reps", type=int, default=7)
    ap.add_argument("--residual", action="store_true", help="fuse a residual add after each linear")
    ap.add_argument("--out", type=Path, default=Path("bench/out/kernels.json"))
    args = ap.parse_args()

    target = tvm.target.Target(presets.get_preset("host").tvm_target())
    layers = args.layers.split(",")
    rows = []
    for phase in args.shapes.split(","):
        m = 1 if phase == "decode" else args.prefill_tokens
        for quant in args.only.split(","):
            for name, k, n in SHAPES:
                if name not in layers:
                    continue
                r = run(quant, m, k, n, args.residual, target, args.reps)
                r.update(phase=phase, quant=quant, layer=name, m=m, k=k, n=n)
                rows.append(r)
                print(f"{phase:8} {quant} {name:8} {m}x{k}->{n}: {r['ms']:.3f} ms", file=sys.stderr)
    bw, _ = read_bandwidth_gbs()
    print(f"\n{target}, TVM threads {tvm.runtime.num_threads()}, read bandwidth {bw:.1f} GB/s, "
          f"median of {args.reps}\n")
    print(table(rows, [("phase", "phase"), ("quant", "quant"), ("layer", "layer"), ("m", "m"), ("k", "k"),
                       ("n", "n"), ("ms", "ms"), ("gbs", "weight GB/s"), ("gflops", "GFLOP/s"),
                       ("compile_s", "compile s")]))
    write_json(args.out, {"date": time.strftime("%Y-%m-%d"), "host": platform.node(), "target": str(target),
                          "threads": tvm.runtime.num_threads(), "read_bandwidth_gbs": bw, "results": rows})


if __name__ == "__main__":
    main()
