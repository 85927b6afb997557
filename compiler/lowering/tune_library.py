"""Candidate kernel libraries for `edgesmith tune`: one shape, one function per candidate.

A candidate is the compiler's own kernel for that shape (the generator the model build calls,
with the candidate's params; the float GEMM also with the CPU schedule looking the params up), so
what is timed is what a tuned bundle runs. The library goes into a small bundle folder (the
runner and runtime libraries of the target, a manifest with its sha256 table) that the ordinary
runner session pushes and verifies; `runner kernelbench` times it (runtime/runner/runner.cc).

    BUNDLE/lib/kernels.so   c0, c1, ...: linears (x, w, s, y) each; x (1, t, k) f32, w (n, k/8) u32,
                            s (n, k/group) scales, y (1, t, n) f32; t = 1 (decode) or PREFILL_TOKENS;
                            attention: attention_cpu's ragged prefill kernel, timed at a few lengths;
                            GPU GEMVs (gemv_gpu): RMSNorm + GEMV (x, g, w, s, y), SiLU*up + GEMV
                            (gu (1, 1, 2k), w, s, y) or a GEMV (x, w, s, y), the kernels of
                            kernels/gpu.py scheduled by schedules_fused.norm_gemv with the
                            candidate's params (a plain GEMV's default: dlight's), for the device's
                            GPU (the manifest's "device" says which; the runner allocates there)
"""
from __future__ import annotations

import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

from edgesmith.compiler.bundle import folder as bundle_io
from edgesmith.compiler.bundle.manifest import BuildInfo, Manifest, ModelInfo, TargetInfo
from edgesmith.compiler.tuning import GpuGemvParams, Tuning, parse_key

PREFILL_TOKENS = 64  # tokens of the prefill GEMM's timed call (a chunk of a prompt)
ATTENTION_LENGTHS = (64, 256)  # prompt lengths the prefill attention is timed at (their times summed)
_DTYPE = {"float32": "f32", "float16": "f16", "uint32": "u32"}


@dataclass(frozen=True)
class Candidate:
    name: str  # function name in the library
    params: object  # a tuning params dataclass


def _func(key: str, params, target, quant):
    """The PrimFunc of kernel `key` with `params`, as the model build makes it."""
    import tvm
    from edgesmith.compiler.kernels import cpu as kernels
    from edgesmith.compiler.kernels import gemv as kernels_gemv
    from edgesmith.compiler.kernels import int8 as kernels_int8
    from edgesmith.compiler.lowering import schedules_cpu as schedules
    from edgesmith.targets.tvm_api import te, tirx

    info = parse_key(key)
    if info["kind"] == "gemv_gpu":
        return _gpu_gemv(key, info, params, target)
    if info["kind"] == "attn_prefill":  # what a prompt's prefill runs: the ragged kernel
        from edgesmith.compiler.kernels import attention_cpu

        return attention_cpu.attention_prefill_ragged_cpu(info["hkv"], info["hq"], info["d"], info["d"], info["dt"],
                                                          params=params)
    kind, n, k = info["kind"], info["n"], info["k"]
    g, s = info.get("g", quant.group_size), info.get("s", quant.storage_dtype)
    if kind in ("gemv_i8", "gemm_i8"):
        isa = kernels_int8.pick(kernels_int8.dot_isas(target), k, g)
        if isa is None:
            raise ValueError(f"{key}: target {target} has no int8 dot product that tiles it")
        # the word order a bundle stores this shape in for this target (quantization/q4.py)
        from edgesmith.compiler.kernels.family import kernel_family

        family = kernel_family(target)
        steps = quant.stored_in_steps(".q_weight", (n, k // 8), family)
        if kind == "gemv_i8":
            return kernels_int8.gemv_kernel(n, k, g, s, isa, params, steps=steps)
        return kernels_int8.gemm_kernel(n, k, g, s, isa, params, steps=steps, i8mm=family.i8mm)
    if kind == "gemv":
        return kernels_gemv.q4_gemv(n, k, g, s, params)
    # the float GEMM: the tensor expression, then the CPU schedule with these params for its shape
    t = tirx.Var("seq_len", "int64")
    x = te.placeholder((1, t, k), "float32", "x")
    if quant.quantized:
        w = te.placeholder((n, k // 8), "uint32", "w")
        sc = te.placeholder((n, k // g), s, "s")
        y, inputs = kernels.q4_linear(x, w, sc, g, params.tokens), [x, w, sc]
    else:
        w = te.placeholder((n, k), quant.storage_dtype, "w")
        y, inputs = kernels.float_linear(x, w, params.tokens), [x, w]
    mod = tvm.IRModule({"main": te.create_prim_func([*inputs, y])})
    with target:
        mod = schedules.apply(target, Tuning.of({key: params}))(mod)
    return mod["main"]


def _gpu_gemv(key: str, info: dict, params, target):
    """The fused GPU decode GEMV of `key`, scheduled with `params` as a bundle's would be."""
    from edgesmith.compiler.kernels import gpu as kernels_gpu
    from edgesmith.compiler.lowering.schedules_fused import norm_gemv
    from edgesmith.targets.tvm_api import te

    n, k, g, s = info["n"], info["k"], info["g"], info["s"]
    w = te.placeholder((n, k // 8), "uint32", "w")
    sc = te.placeholder((n, k // g), s, "s")
    if info["p"] == "norm":
        x, gamma = te.placeholder((1, 1, k), "float32", "x"), te.placeholder((k,), s, "g")
        # eps: any (it is one add in the epilogue; the model's own is used when a bundle is compiled)
        inputs, y = [x, gamma, w, sc], kernels_gpu.q4_linear_normed(x, gamma, w, sc, g, 1e-5)
    elif info["p"] == "silu":
        gu = te.placeholder((1, 1, 2 * k), "float32", "gu")
        inputs, y = [gu, w, sc], kernels_gpu.q4_linear_silu_mul(gu, w, sc, g)
    else:
        x = te.placeholder((1, 1, k), "float32", "x")
        inputs, y = [x, w, sc], kernels_gpu.q4_linear(x, w, sc, g)
    func = te.create_prim_func([*inputs, y])
    if info["p"] == "plain" and params == GpuGemvParams():  # the default: dlight's GEMV, as a bundle gets it
        import tvm
        from edgesmith.compiler.lowering import schedules_gpu

        with target:
            mod = tvm.transform.Sequential(schedules_gpu.passes(target))(tvm.IRModule({"main": func}))
        return mod["main"]
    sch = norm_gemv(func, Tuning.of({key: params}))
    if sch is None:
        raise ValueError(f"{key}: the fused GEMV schedule did not take its kernel")
    return sch.mod["main"]


def arg_specs(key: str, quant) -> list[tuple[str, str]]:
    """(label suffix, the runner's --fn argument list) per argument set kernel `key` is timed on:
    one for a linear; attention at ATTENTION_LENGTHS tokens (a fresh prompt: q = k = v length)."""
    info = parse_key(key)
    if info["kind"] != "attn_prefill":
        return [("", arg_spec(key, quant))]
    hq, hkv, d, dt = info["hq"], info["hkv"], info["d"], _DTYPE[info["dt"]]
    out = []
    for n in ATTENTION_LENGTHS:
        # q, q_indptr, k, v, kv_indptr, q_rope_position, k_rope_pos_offset, output, lse,
        # causal, rotary_mode, rope_scale, rope_theta, sm_scale
        out.append((f"@{n}", ",".join([f"{dt}:{n}x{hq}x{d}", f"i32:2@0/{n}", f"{dt}:{n}x{hkv}x{d}",
                                       f"{dt}:{n}x{hkv}x{d}", f"i32:2@0/{n}", f"i32:{n}", "i32:1@0",
                                       f"{dt}:{n}x{hq}x{d}", f"f32:{n}x{hq}", "int@1", "int@0", "float@1",
                                       "float@10000", f"float@{d ** -0.5:.6g}"])))
    return out


def arg_spec(key: str, quant) -> str:
    """The runner's --fn argument list (dtype:shape, output last) for linear kernel `key`."""
    info = parse_key(key)
    n, k = info["n"], info["k"]
    if info["kind"] == "gemv_gpu":  # (x, g | gu), w, s, y: the fused kernel's arguments
        s = _DTYPE[info["s"]]
        head = {"norm": [f"f32:1x1x{k}", f"{s}:{k}"], "silu": [f"f32:1x1x{2 * k}"]}.get(info["p"], [f"f32:1x1x{k}"])
        return ",".join([*head, f"u32:{n}x{k // 8}", f"{s}:{n}x{k // info['g']}", f"f32:1x1x{n}"])
    t = 1 if info["kind"].startswith("gemv") else PREFILL_TOKENS
    if quant.quantized:
        g, s = info.get("g", quant.group_size), info.get("s", quant.storage_dtype)
        weights = [f"u32:{n}x{k // 8}", f"{_DTYPE[s]}:{n}x{k // g}"]
    else:
        weights = [f"{_DTYPE[quant.storage_dtype]}:{n}x{k}"]
    return ",".join([f"f32:1x{t}x{k}", *weights, f"f32:1x{t}x{n}"])


def build_candidates(key: str, candidates: list[Candidate], quant, preset, out: Path) -> Path:
    """Compile every candidate of kernel `key` into one library, in a bundle folder at `out`
    (replaced whole: never a half-written folder)."""
    return build_library([(c.name, key, c.params, quant) for c in candidates], preset, out,
                         f"edgesmith tune candidates for {key}")


def build_library(funcs: list[tuple], preset, out: Path, what: str) -> Path:
    """funcs: (name, shape key, params, quantization) each -> one library in a bundle folder at `out`."""
    import tvm
    from edgesmith.compiler.build import gpu_device_entry, preset_export_kwargs, presets_runtime_files
    from edgesmith.targets.tvm_api import TVM_VERSION

    target = tvm.target.Target(preset.tvm_target())
    mod = {name: _func(key, params, target, quant).with_attr("global_symbol", name) for name, key, params, quant in funcs}
    lib = tvm.compile(tvm.IRModule(mod), target=target)
    with bundle_io.staging(Path(out)) as tmp:
        (tmp / "lib").mkdir()
        lib.export_library(str(tmp / "lib" / "kernels.so"), **preset_export_kwargs(preset))
        (tmp / "bin").mkdir()
        for rel, src in presets_runtime_files(preset).items():
            (tmp / "bin" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tmp / "bin" / rel)
        Manifest(model=ModelInfo(source=what), quant=funcs[0][3].name,
                 target=TargetInfo(preset=preset.name, tvm_target=preset.tvm_target(), arch=preset.arch,
                                   triple=preset.triple, layout=preset.layout.name),
                 arch=preset.arch, tvm_version=TVM_VERSION, kv_cache=None, params=(),
                 device=gpu_device_entry(preset) if preset.gpu else None,  # the runner's device and its runtime
                 build=BuildInfo(host=platform.node(),
                                 functions={name: {"kernel": key, "params": params.__dict__}
                                            for name, key, params, _ in funcs})).write(tmp)
    return Path(out)
