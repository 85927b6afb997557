"""q4f16i8: the int4 GEMV (decode) and GEMM (prefill) with int8 activations on int8 dot
products (kernels_int8).

The kernels are checked against an independent numpy implementation of the scheme (x quantized
in blocks of 32 with scale max|x|/127, rounded half away from zero; integer dot products per
group; times both scales), and against the float layer it approximates. The model is checked
against q0f32 with the same bounds as q4f16, and on Arm (dotprod, under qemu) against the host.
"""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

import tvm  # a hard dependency (requirements.lock): missing, the test fails

from edgesmith.compiler.kernels import int8 as kernels_int8  # noqa: E402
from edgesmith.compiler.quantization.registry import dequantize_q4, quantize_q4  # noqa: E402
from edgesmith.runtime.evaluate import compare_logits, teacher_forced_logits  # noqa: E402
from edgesmith.targets import presets  # noqa: E402

HOST = tvm.target.Target(presets.get_preset("host").tvm_target())
HOST_ISAS = kernels_int8.dot_isas(HOST)
needs_dot = pytest.mark.skipif(not HOST_ISAS, reason="this CPU has no int8 dot-product instructions")


def numpy_int8_gemv(x: np.ndarray, packed: np.ndarray, scale: np.ndarray, group: int) -> np.ndarray:
    k = x.size
    blocks = x.astype(np.float32).reshape(k // group, group)
    amax = np.abs(blocks).max(axis=1, keepdims=True)
    x_scale = amax / np.float32(127)
    inv = np.divide(np.float32(127), amax, out=np.zeros_like(amax), where=amax > 0)
    scaled = blocks * inv  # float32, as the scheme writes it: x * (127 / max|x|)
    xq = (np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)).astype(np.int64)  # half away from zero
    n = packed.shape[0]
    nib = (packed[:, :, None] >> (np.arange(8, dtype=np.uint32) * 4)) & 0xF
    wq = nib.astype(np.int64).reshape(n, k // group, group) - 8
    dots = np.einsum("ngk,gk->ng", wq, xq.reshape(k // group, group))  # exact integers
    return (dots * x_scale[:, 0][None, :] * scale.astype(np.float32)).sum(axis=1)


@needs_dot
@pytest.mark.parametrize("isa", HOST_ISAS, ids=lambda i: i.name)
@pytest.mark.parametrize("n,k,scale_dtype", [(48, 256, "float16"), (40, 512, "float32")])
def test_gemv_matches_numpy_scheme(isa, n, k, scale_dtype):
    if kernels_int8.pick([isa], k, 32) is None:
        pytest.skip(f"{isa.name} does not tile k={k}")
    func = kernels_int8.q4_gemv_i8(n, k, 32, scale_dtype, isa).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=HOST)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 1, k)).astype(np.float32)
    x[0, 0, 32:64] = 0  # an all-zero block: scale 0, no division by it
    packed, scale = quantize_q4((rng.standard_normal((n, k)) * 0.05).astype(np.float32), 32, scale_dtype)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in (x, packed, scale)] + [tvm.runtime.empty((1, 1, n), "float32", dev)]
    lib["main"](*args)
    got = args[-1].numpy()[0, 0]
    want = numpy_int8_gemv(x[0, 0], packed, scale, 32)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    exact = dequantize_q4(packed, scale, 32) @ x[0, 0]
    assert np.abs(got - exact).max() < 2e-2 * np.abs(exact).max()  # it approximates the float layer


@needs_dot
@pytest.mark.parametrize("isa", HOST_ISAS, ids=lambda i: i.name)
@pytest.mark.parametrize("tokens,scale_dtype", [(1, "float16"), (5, "float16"), (13, "float16"), (5, "float32")])
def test_gemm_matches_numpy_scheme(isa, tokens, scale_dtype):  # 13: the last register tile of tokens is partly padding
    n, k = 4 * isa.lanes * 2, 256
    func = kernels_int8.q4_gemm_i8(n, k, 32, scale_dtype, isa).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=HOST)
    rng = np.random.default_rng(tokens)
    x = rng.standard_normal((1, tokens, k)).astype(np.float32)
    x[0, 0, :32] = 0
    packed, scale = quantize_q4((rng.standard_normal((n, k)) * 0.05).astype(np.float32), 32, scale_dtype)  # q4f32i8: float32
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.full((1, tokens, n), np.nan, np.float32), dev)
    lib["main"](*[tvm.runtime.tensor(a, dev) for a in (x, packed, scale)], out)
    got = out.numpy()[0]
    want = np.stack([numpy_int8_gemv(x[0, i], packed, scale, 32) for i in range(tokens)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


# Every int4 matmul of Phi-3-mini at its real width: (out, in) of qkv, o, gate_up, down and lm_head.
PHI3_MINI_LAYERS = {"qkv": (9216, 3072), "o": (3072, 3072), "gate_up": (16384, 3072), "down": (3072, 8192),
                    "lm_head": (32064, 3072)}


def _rows_in_blocks(x_tokens, packed, scale, rows=2048):
    """numpy_int8_gemv per token over blocks of rows (its int64 temporaries stay small)."""
    return np.stack([np.concatenate([numpy_int8_gemv(x, packed[r:r + rows], scale[r:r + rows], 32)
                                     for r in range(0, packed.shape[0], rows)]) for x in x_tokens])


@needs_dot
@pytest.mark.slow
@pytest.mark.parametrize("layer", sorted(PHI3_MINI_LAYERS))
def test_int8_kernels_at_full_phi3_widths(layer):
    """Per layer, at the shapes the model runs: the decode GEMV (one token) and the prefill GEMM
    (5 tokens) against the numpy scheme, so the loose model-level KL bound is not the only guard."""
    n, k = PHI3_MINI_LAYERS[layer]
    isa = kernels_int8.pick(HOST_ISAS, k, 32)
    assert isa is not None, f"{layer}: no dot-product ISA tiles k={k}"
    rng = np.random.default_rng(n + k)
    packed, scale = quantize_q4((rng.standard_normal((n, k)) * 0.02).astype(np.float32), 32, "float16")
    dev = tvm.cpu()
    w = [tvm.runtime.tensor(a, dev) for a in (packed, scale)]
    x1 = rng.standard_normal((1, 1, k)).astype(np.float32)
    gemv = kernels_int8.q4_gemv_i8(n, k, 32, "float16", isa).with_attr("global_symbol", "main")
    out = tvm.runtime.empty((1, 1, n), "float32", dev)
    tvm.compile(tvm.IRModule({"main": gemv}), target=HOST)["main"](tvm.runtime.tensor(x1, dev), *w, out)
    want = _rows_in_blocks(x1[0], packed, scale)
    np.testing.assert_allclose(out.numpy()[0], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert kernels_int8.gemm_applies(isa, n, k, 32), f"{layer}: the prefill GEMM does not apply at ({n}, {k})"
    x5 = rng.standard_normal((1, 5, k)).astype(np.float32)
    gemm = kernels_int8.q4_gemm_i8(n, k, 32, "float16", isa).with_attr("global_symbol", "main")
    out = tvm.runtime.tensor(np.full((1, 5, n), np.nan, np.float32), dev)
    tvm.compile(tvm.IRModule({"main": gemm}), target=HOST)["main"](tvm.runtime.tensor(x5, dev), *w, out)
    want = _rows_in_blocks(x5[0], packed, scale)
    np.testing.assert_allclose(out.numpy()[0], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_isa_choice_per_target_and_shape():
    arm = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+v8.2a", "+dotprod"]})
    assert [i.name for i in kernels_int8.dot_isas(arm)] == ["dotprod", "neon"]
    plain_arm = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"})
    assert [i.name for i in kernels_int8.dot_isas(plain_arm)] == ["neon"]  # sdot emulated (smull)
    spr = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "sapphirerapids"})
    isas = kernels_int8.dot_isas(spr)
    assert [i.name for i in isas] == ["avx512vnni", "avxvnni"]
    assert kernels_int8.pick(isas, 3072, 32).name == "avx512vnni"  # 384 words
    assert kernels_int8.pick(isas, 64, 32).name == "avxvnni"  # 8 words: the 256-bit form
    assert kernels_int8.pick(isas, 32, 32) is None  # 4 words: float activations
    assert kernels_int8.pick(isas, 3072, 48) is None  # groups must be whole words within a vector
    assert kernels_int8.gemm_applies(isas[0], 9216, 3072, 32)
    assert not kernels_int8.gemm_applies(isas[0], 9216 + 16, 3072, 32)  # strips of 2 vectors of outputs


@needs_dot
@pytest.mark.parametrize("variant", ["mini-4k", "medium", "phi-4-mini"])
def test_q4f16i8_model_accuracy_against_q0f32(variant, compiled):
    bundle = compiled(variant, "q4f16i8")
    import json

    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["int8_dot"] == HOST_ISAS[0].name
    (lib,) = (bundle / "lib").iterdir()
    symbols = subprocess.run(["nm", "-D", str(lib)], capture_output=True, text=True, check=True).stdout
    assert "q4_matmul_i8" in symbols  # decode and prefill really run the int8 kernels
    ids = np.random.default_rng(0).integers(0, 256, 24).tolist()
    ref = teacher_forced_logits(compiled(variant, "q0f32"), ids)
    report = compare_logits(ref, teacher_forced_logits(bundle, ids))
    float_acts = compare_logits(ref, teacher_forced_logits(compiled(variant, "q4f16"), ids))
    assert report["mean_kl"] < 0.05, report  # the bounds of the q4f16 test (test_quant.py)
    assert report["top1_agreement"] >= 0.4, report
    assert report["mean_kl"] < 2 * float_acts["mean_kl"] + 0.01, (report, float_acts)


# Prompt lengths of the checks (#28): one token, a few, 64, and 530 (past a 512-token chunk).
ARM_PROMPTS = {1: [7], 7: [1, 5, 9, 200, 17, 3, 44], 64: [(37 * i + 11) % 500 + 3 for i in range(64)],
               530: [(53 * i + 7) % 500 + 3 for i in range(530)]}


ARM_IDS = [1, 5, 9, 200, 17, 3, 44, 100, 7, 8]


@pytest.fixture(scope="module")
def int8_runs(tmp_path_factory):
    """runs(name) -> (bundle, {"decode"/"prefill": logits}, {prompt length: greedy tokens}) of
    random:tiny at q4f16i8 for a target, each made once (the host's serves every Arm preset)."""
    from edgesmith.compiler.build import compile_bundle
    from edgesmith.runtime.profile.check import device_logits
    from edgesmith.runtime.session import run_runner

    root = tmp_path_factory.mktemp("int8-runs")
    made = {}

    def runs(name: str):
        if name not in made:  # the same KV cache everywhere (dotprod's default is float16)
            bundle = compile_bundle("random:tiny", "q4f16i8", name, root / name, kv_dtype="float16")
            lines = run_runner(bundle, ["logits", str(bundle), "--tokens", ",".join(map(str, ARM_IDS))], timeout=300)
            logits = {"decode": device_logits(lines)}
            # the prefill GEMM's logits: 64 tokens at once, then 4 decoded (teacher-forced)
            prefilled = ARM_PROMPTS[64] + [5, 9, 200, 17]
            lines = run_runner(bundle, ["logits", str(bundle), "--tokens", ",".join(map(str, prefilled)),
                                        "--prefill", "64"], timeout=300)
            logits["prefill"] = device_logits(lines)
            tokens = {}
            for length, prompt in ARM_PROMPTS.items():
                records = run_runner(bundle, ["generate", str(bundle), "--tokens", ",".join(map(str, prompt)),
                                              "-n", "8"], timeout=300)
                tokens[length] = records[-1]["output_ids"]
            made[name] = bundle, logits, tokens
        return made[name]

    return runs


@pytest.mark.slow
@pytest.mark.parametrize("preset,dot_insn", [("arm64-linux-dotprod", "sdot"), ("android-arm64", "sdot"),
                                             ("arm64-linux-i8mm", "sdot"), ("arm64-linux", "smlal")])
def test_arm_dotprod_bundle_equals_host_under_qemu(int8_runs, preset, dot_insn):
    """The same model through sdot (or, on plain Armv8-A, smull/smlal) on Arm (the runner under
    qemu) and vpdpbusd here: the integer dot products are exact, so the logits agree to float
    rounding and the greedy tokens are the same. The decode GEMV there is kernels/int8_arm.py's
    (four rows at a time, over words stored in step order on dotprod, ld4 on plain Armv8-A); the
    host's is checked against the numpy scheme above. The Arm
    logits are also checked against the numpy int8 scheme over the bundle's own codes, so the test
    means something on an x86 CPU without int8 dot products (then only the Arm bundle runs)."""
    import json

    from numpy_phi3 import NumpyPhi3, dequantized_weights, int8_layers, read_tensor_cache

    from edgesmith.targets import toolchains

    arm = presets.get_preset(preset)
    qemu = arm.layout.qemu_wrapper(arm.arch, installed=False)[0]  # what this machine runs its binaries with
    assert toolchains.toolchain_status(arm)[0] and shutil.which(qemu), "scripts/install.sh installs both"
    bundle, logits, tokens = int8_runs(preset)
    (lib,) = (bundle / "lib").iterdir()
    assert b"q4_matmul_i8" in lib.read_bytes()
    asm = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(lib)], capture_output=True, text=True,
                         check=True).stdout
    assert f"\t{dot_insn}\t" in asm
    manifest = json.loads((bundle / "manifest.json").read_text())
    int4 = sorted(name for name in manifest["params"] if name.endswith(".q_weight"))
    if dot_insn == "sdot":
        # every random:tiny weight (k % 128 == 0, n % 8 == 0) stored in step order for int8_arm's
        # kernels (the four-row GEMV reads it with plain loads; the reader below puts it back)
        assert sorted(manifest["int4_step_order"]) == int4 and int4
    else:
        # plain Armv8-A keeps the plain order: its four-row GEMV deinterleaves with ld4
        assert "int4_step_order" not in manifest and "\tld4\t" in asm
    params = read_tensor_cache(bundle / "params")
    ref = NumpyPhi3(json.loads((bundle / "manifest.json").read_text())["model"]["config"],
                    dequantized_weights(params), int8=int8_layers(params), kv_float16=True)
    scheme = np.stack([ref.forward([t]) for t in ARM_IDS])
    diffs = np.abs(logits["decode"] - scheme).max(axis=1)
    # float rounding, or one activation rounded to the neighbouring int8 step (tests/test_prefill_logits.py)
    assert diffs.max() < 0.1 and (diffs < 1e-3).mean() >= 0.5, diffs
    assert all(len(tokens[length]) == 8 for length in ARM_PROMPTS)
    if HOST_ISAS:
        _, host_logits, host_tokens = int8_runs("host")
        assert b"q4_matmul_i8" in next((int8_runs("host")[0] / "lib").iterdir()).read_bytes()
        for kind in ("decode", "prefill"):
            report = compare_logits(host_logits[kind], logits[kind])
            assert report["max_abs_diff"] < 1e-4 and report["top1_agreement"] == 1.0, (kind, report)
        assert tokens == host_tokens


@pytest.mark.slow
def test_arm_i8mm_prefill_runs_smmla_and_follows_the_int8_scheme_under_qemu(int8_runs):
    """arm64-linux-i8mm prefills with `smmla` (kernels/int8_smmla.py; decode keeps the four-row
    sdot GEMV), arm64-linux-dotprod with `sdot` by element: prompts of 7 (a partial token tile) and
    64 tokens prefilled at once under qemu, then decoded (teacher-forced). Both give the numpy int8
    scheme's rows over the bundle's own codes and each other's (the integer dots are exact)."""
    import json

    from numpy_phi3 import NumpyPhi3, dequantized_weights, int8_layers, read_tensor_cache

    from edgesmith.runtime.profile.check import device_logits
    from edgesmith.runtime.session import run_runner

    i8mm, i8mm_logits, _ = int8_runs("arm64-linux-i8mm")
    dotprod, dotprod_logits, _ = int8_runs("arm64-linux-dotprod")

    def asm(bundle):
        (lib,) = (bundle / "lib").iterdir()
        return subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(lib)], capture_output=True, text=True,
                              check=True).stdout

    assert "\tsmmla\t" in asm(i8mm) and "\tsmmla\t" not in asm(dotprod)
    params = read_tensor_cache(i8mm / "params")
    manifest = json.loads((i8mm / "manifest.json").read_text())
    diffs = []
    for prompt in (ARM_PROMPTS[7], ARM_PROMPTS[64]):
        ids = prompt + [5, 9, 200, 17]
        if len(prompt) == 64:  # the fixture's run
            got, other = i8mm_logits["prefill"], dotprod_logits["prefill"]
        else:
            got, other = (device_logits(run_runner(b, ["logits", str(b), "--tokens", ",".join(map(str, ids)),
                                                       "--prefill", str(len(prompt))], timeout=300))
                          for b in (i8mm, dotprod))
        ref = NumpyPhi3(manifest["model"]["config"], dequantized_weights(params), int8=int8_layers(params),
                        kv_float16=True)
        ref.forward(prompt[:-1])
        scheme = np.stack([ref.forward([t]) for t in ids[len(prompt) - 1:]])
        assert got.shape == scheme.shape, (got.shape, scheme.shape)
        diffs.append(np.abs(got - scheme).max(axis=1))
        assert np.abs(got - other).max() < 1e-4, len(prompt)  # measured: the same floats
    # float rounding, or one activation rounded to the neighbouring int8 step (tests/test_prefill_logits.py's
    # bounds, over both prompts' rows; measured 2026-12-07: 7 of 10 within 1e-7, the others up to 5.8e-3,
    # dotprod's sdot GEMM the same rows)
    diffs = np.concatenate(diffs)
    assert diffs.max() < 0.1 and (diffs < 1e-4).mean() >= 0.5, diffs


def test_step_order_is_chosen_per_shape_and_preset_and_undone_by_the_reader(tmp_path):
    """Step order (quantization/q4.py): word j of block i of every 16 words at 4 j + i, only where
    int8_arm's dotprod kernels run both decode and prefill; tests/numpy_phi3.py's reader, given the
    manifest's list, gives the words back in their plain order."""
    import json

    from numpy_phi3 import read_tensor_cache

    from edgesmith.compiler.kernels.family import kernel_family
    from edgesmith.compiler.quantization.q4 import step_order
    from edgesmith.compiler.quantization.registry import get_quantization
    from edgesmith.targets.tvm_api import dump_tensor_cache

    words = np.arange(2 * 32, dtype=np.uint32).reshape(2, 32)
    stepped = step_order(words)
    assert stepped[0, :8].tolist() == [0, 4, 8, 12, 1, 5, 9, 13] and stepped[1, 16] == 48
    assert (step_order(stepped) == words).all()
    q, plain = get_quantization("q4f16i8"), get_quantization("q4f16")
    family = {p: kernel_family(tvm.target.Target(presets.get_preset(p).tvm_target()))
              for p in ("arm64-linux-dotprod", "android-arm64", "arm64-linux-i8mm", "arm64-linux", "host")}
    for p in ("arm64-linux-dotprod", "android-arm64", "arm64-linux-i8mm"):
        assert q.stored_in_steps("m.qkv_proj.q_weight", (9216, 3072 // 8), family[p]), p
        assert not q.stored_in_steps("m.qkv_proj.q_scale", (9216, 3072 // 32), family[p])
        assert not q.stored_in_steps("m.x.q_weight", (9216, 96 // 8), family[p])  # k: no whole step of 4 blocks
        assert not q.stored_in_steps("m.x.q_weight", (44, 3072 // 8), family[p])  # n: no whole strip of 8 rows
        assert not plain.stored_in_steps("m.qkv_proj.q_weight", (9216, 3072 // 8), family[p])  # float activations
    for p in ("arm64-linux", "host"):
        assert not q.stored_in_steps("m.qkv_proj.q_weight", (9216, 3072 // 8), family[p]), p
    dump_tensor_cache({"a.q_weight": stepped, "b.q_weight": stepped}, str(tmp_path / "params"))
    (tmp_path / "manifest.json").write_text(json.dumps({"int4_step_order": ["a.q_weight"]}))
    back = read_tensor_cache(tmp_path / "params")
    assert (back["a.q_weight"] == words).all() and (back["b.q_weight"] == stepped).all()


def test_arm_gemv_choice_and_every_tuner_choice_builds():
    """kernels_int8.gemv_kernel gives Arm (sdot and NEON) the four-row GEMV where the shape allows
    and the one-row one elsewhere; every rows/prefetch choice the tuner tries builds for both
    (run under qemu: the bundle test above; n=40 leaves a part-filled last task of 16 rows)."""
    from edgesmith.compiler.kernels import int8_arm
    from edgesmith.compiler.tuning import SPACES
    from edgesmith.targets.tvm_api import tirx

    for preset, isa_name in (("arm64-linux-dotprod", "dotprod"), ("arm64-linux", "neon")):
        target = tvm.target.Target(presets.get_preset(preset).tvm_target())
        isa = kernels_int8.pick(kernels_int8.dot_isas(target), 256, 32)
        assert isa.name == isa_name
        assert int8_arm.applies(isa, 40, 256, 32)
        assert not int8_arm.applies(isa, 42, 256, 32)  # rows in fours
        assert not int8_arm.applies(isa, 40, 96, 32)  # k in steps of 4 blocks
        assert not int8_arm.applies(HOST_ISAS[0], 40, 256, 32) if HOST_ISAS else True
        steps = isa_name == "dotprod"  # as the model stores the words there (quantization/q4.py)
        for params in SPACES["gemv_i8"]:
            func = kernels_int8.gemv_kernel(40, 256, 32, "float16", isa, params, steps=steps)
            asm = tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                             target=target).inspect_source("asm")
            assert ("\tld4\t" in asm) is not steps, params  # step order: plain loads, no deinterleave
        one_row = kernels_int8.gemv_kernel(42, 96, 32, "float16", isa).with_attr("global_symbol", "main")
        assert "\tld4\t" not in tirx.build(tvm.IRModule({"main": one_row}), target=target).inspect_source("asm")


def test_arm_gemm_choice_and_every_tuner_choice_builds():
    """kernels_int8.gemm_kernel gives Arm dotprod the prefill GEMM with `sdot` by element
    (kernels/int8_arm.py: one register of a token's bytes feeds 4 rows, no per-sdot activation
    broadcast) at every token tile the tuner tries; plain NEON and x86 keep q4_gemm_i8. Numerics run
    under qemu in the bundle tests (above; tests/test_prefill_logits.py: prompts of 7, 64 and 530
    against the numpy int8 scheme). n=40: 5 strips of 8 rows, a task count that is no power of two."""
    import re

    from edgesmith.compiler.kernels import int8_arm
    from edgesmith.compiler.kernels.family import kernel_family
    from edgesmith.compiler.tuning import SPACES
    from edgesmith.targets.tvm_api import tirx

    target = tvm.target.Target(presets.get_preset("arm64-linux-dotprod").tvm_target())
    isa = kernels_int8.pick(kernels_int8.dot_isas(target), 256, 32)
    assert int8_arm.gemm_applies(isa, 40, 256, 32) and not int8_arm.gemm_applies(isa, 44, 256, 32)
    plain = tvm.target.Target(presets.get_preset("arm64-linux").tvm_target())
    assert not int8_arm.gemm_applies(kernels_int8.pick(kernels_int8.dot_isas(plain), 256, 32), 40, 256, 32)
    assert not int8_arm.gemm_applies(HOST_ISAS[0], 40, 256, 32) if HOST_ISAS else True
    for params in SPACES["gemm_i8"]:
        func = kernels_int8.gemm_kernel(40, 256, 32, "float16", isa, params,
                                        steps=True).with_attr("global_symbol", "main")
        asm = tirx.build(tvm.IRModule({"main": func}), target=target).inspect_source("asm")
        by_element = len(re.findall(r"\tsdot\tv\d+\.4s, v\d+\.16b, v\d+\.4b\[[0-3]\]", asm))
        assert by_element == 8 * params.tokens * 2 and "ld1r" not in asm, params  # 8 rows x tile x block
    # arm64-linux-i8mm (KernelFamily.i8mm): `smmla` (kernels/int8_smmla.py), 2 rows x 2 tokens x 8 k an
    # instruction: 8 rows x tile x 32 k a block is 8 x tokens of them, at every tile the tuner tries
    i8mm = tvm.target.Target(presets.get_preset("arm64-linux-i8mm").tvm_target())
    assert kernel_family(i8mm).i8mm and not kernel_family(target).i8mm and not kernel_family(plain).i8mm
    for params in SPACES["gemm_i8"]:
        func = kernels_int8.gemm_kernel(40, 256, 32, "float16", isa, params, steps=True,
                                        i8mm=True).with_attr("global_symbol", "main")
        asm = tirx.build(tvm.IRModule({"main": func}), target=i8mm).inspect_source("asm")
        assert len(re.findall(r"\tsmmla\tv\d+\.4s, v\d+\.16b, v\d+\.16b", asm)) == 8 * params.tokens, params
        assert "\tsdot\t" not in asm and "ld1r" not in asm, params


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["arm64-linux-dotprod", "arm64-linux-i8mm"])
def test_arm_dotprod_bundle_tuned_otherwise_gives_the_same_logits(int8_runs, tmp_path, preset):
    """Every int8 kernel of random:tiny on arm64-linux-dotprod given a non-default tuner choice
    (decode: rows per task and prefetch distance of int8_arm's four-row GEMV; prefill: the token
    tile of its `sdot`-by-element GEMM, on arm64-linux-i8mm of its `smmla` one: 2, 6 and 8 tokens, 6
    an odd number of token pairs; the step order itself is fixed, no choice): the library
    changes, the logits do not (exact integer dots, each output reduced in the same order), under
    qemu, decoded one at a time and prefilled 64 at once, against the untuned bundle."""
    import dataclasses
    import json

    from edgesmith.compiler.build import compile_bundle
    from edgesmith.compiler.inputs.checkpoint import open_checkpoint
    from edgesmith.compiler.kernels.family import kernel_family
    from edgesmith.compiler.quantization.registry import get_quantization
    from edgesmith.compiler.tuning import SPACES, TuningRecord, fingerprint_id, parse_key
    from edgesmith.runtime.profile.check import device_logits
    from edgesmith.runtime.session import run_runner
    from edgesmith.runtime.tune.shapes import tunable_shapes

    family = kernel_family(tvm.target.Target(presets.get_preset(preset).tvm_target()))
    shapes = [s for s in tunable_shapes(open_checkpoint("random:tiny").config, get_quantization("q4f16i8"), family)
              if parse_key(s.key)["kind"] in ("gemv_i8", "gemm_i8")]
    assert {parse_key(s.key)["kind"] for s in shapes} == {"gemv_i8", "gemm_i8"}
    table = {}
    for i, shape in enumerate(shapes):
        space = SPACES[parse_key(shape.key)["kind"]]
        others = [p for p in space if p != type(space[0])()]
        table[shape.key] = others[(3 * i + 1) % len(others)]
    fp = {"arch": "aarch64"}
    record = TuningRecord(fingerprint=fp, fingerprint_id=fingerprint_id(fp), target=preset, device="test",
                          emulated=True, kernels={k: {"params": dataclasses.asdict(p)} for k, p in table.items()})
    tuned = compile_bundle("random:tiny", "q4f16i8", preset, tmp_path / "tuned", kv_dtype="float16", tuning=record)
    default, logits, _ = int8_runs(preset)
    manifest = json.loads((tuned / "manifest.json").read_text())
    assert manifest["tuning"]["kernels"] == {k: dataclasses.asdict(v) for k, v in table.items()}
    assert manifest["int4_step_order"] == json.loads((default / "manifest.json").read_text())["int4_step_order"]
    assert next((tuned / "lib").iterdir()).read_bytes() != next((default / "lib").iterdir()).read_bytes()
    got = device_logits(run_runner(tuned, ["logits", str(tuned), "--tokens", ",".join(map(str, ARM_IDS))], timeout=300))
    assert np.abs(got - logits["decode"]).max() < 1e-5
    prefilled = ARM_PROMPTS[64] + [5, 9, 200, 17]
    got = device_logits(run_runner(tuned, ["logits", str(tuned), "--tokens", ",".join(map(str, prefilled)),
                                           "--prefill", "64"], timeout=300))
    assert np.abs(got - logits["prefill"]).max() < 1e-5
