"""Long context against transformers, in both engines (TVM's Python VM and the C++ runner).

Checkpoints of our own, written by transformers (hf_tiny.py, tiny dimensions):
- longrope: Phi-3-mini-128k-shaped with the real original_max_position_embeddings 4096 (max
  8192); a 4200-token prompt prefilled in chunks of 512 uses the long factors in every chunk,
  as transformers' one forward does; a 4090-token prompt decoding across 4096 switches to them.
- window: Phi-3-mini-4k-shaped (MHA, default RoPE, max 4096) with sliding_window 64, compiled
  with prefill chunks of 32, so the window is crossed inside a chunk, across chunks and while
  decoding; its cache slides (the window's pages only). window-long: the same checkpoint compiled
  for 4352 tokens (past max_position_embeddings, as its RoPE allows) with chunks of 512.
- plain: Phi-3-mini-4k-shaped without a window; a 600-token prompt takes two chunks of 512.
Reference: transformers' Phi3ForCausalLM prefilling the prompt in one forward, then decoding
greedily with its own cache. q0f32: logits within 1e-4 at every step, greedy tokens equal.

float16 KV cache: within KL / top-1 bounds of the float32 cache (stated below). Bad input: one
line each, nothing written.
"""
from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
import torch

from hf_tiny import VOCAB, hf_continue, make_tiny_checkpoint

from edgesmith.cli import main as cli_main
from edgesmith.compiler.build import compile_bundle
from edgesmith.errors import BundleError, ConfigError, EdgesmithError
from edgesmith.runtime.engine import Engine
from edgesmith.runtime.evaluate import compare_logits
from edgesmith.runtime.session import run_runner

pytestmark = pytest.mark.slow

TOL = 1e-4
LONGROPE = dict(original_max_position_embeddings=4096, max_position_embeddings=8192)
WINDOW = dict(sliding_window=64, max_position_embeddings=4096)
PLAIN = dict(max_position_embeddings=4096)
# float16 KV vs float32 KV, teacher-forced over 61 positions of random:tiny (q0f32 and q4f16
# alike): mean KL 8e-10 nats, top-1 100%, max |logit diff| 2e-4 (2026-11-28). The bounds leave
# three orders of magnitude for other CPUs' rounding and still catch a broken cache (a wrong key
# or a lost page moves KL to 1e-3 and beyond)
F16_MAX_MEAN_KL = 1e-6
F16_MIN_TOP1 = 0.95


def _prompt(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(4, VOCAB, n).tolist()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{name: (checkpoint folder, q0f32 host bundle)}, made on first use."""
    made = {}
    specs = {  # name: (variant, config overrides, compile kwargs)
        "longrope": ("mini-128k", LONGROPE, dict(context=4352)),
        "window": ("mini-4k", WINDOW, dict(prefill_chunk=32)),
        "window-long": ("mini-4k", WINDOW, dict(context=4352)),
        "plain": ("mini-4k", PLAIN, {}),
    }

    def get(name: str):
        if name not in made:
            variant, overrides, kwargs = specs[name]
            root = tmp_path_factory.mktemp(name)
            ckpt = make_tiny_checkpoint(variant, root / "ckpt", overrides=overrides)
            made[name] = ckpt, compile_bundle(ckpt, "q0f32", "host", root / "bundle", **kwargs)
        return made[name]

    return get


def hf_greedy(folder, prompt: list[int], steps: int):
    """transformers: the whole prompt in one forward, then `steps` greedy decodes with its cache.
    Returns (logits (steps + 1, vocab), the steps + 1 greedy tokens)."""
    from transformers import Phi3ForCausalLM

    model = Phi3ForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    logits, ids = [], []
    with torch.no_grad():
        out = hf_continue(model, prompt)
        for i in range(steps + 1):
            step = out.logits[0, -1].numpy().astype(np.float32)
            logits.append(step)
            ids.append(int(np.argmax(step)))
            if i < steps:
                out = hf_continue(model, [ids[-1]], out)
    return np.stack(logits), ids


def engine_greedy(bundle, prompt: list[int], steps: int, **kw):
    eng = Engine(bundle, **kw)
    logits = [eng.prefill(prompt)]
    ids = [int(np.argmax(logits[-1]))]
    for _ in range(steps):
        logits.append(eng.decode(ids[-1]))
        ids.append(int(np.argmax(logits[-1])))
    return np.stack(logits), ids


def runner_greedy(bundle, prompt: list[int], steps: int, teacher: list[int]):
    """The runner: greedy tokens from `generate`; logits from `logits --prefill` over the prompt
    then `teacher` (the reference's tokens), so each step's logits line up with the reference's."""
    tokens = ",".join(map(str, prompt))
    lines = run_runner(bundle, ["generate", str(bundle), "--tokens", tokens, "-n", str(steps + 1)], timeout=600)
    (gen,) = [l for l in lines if "output_ids" in l]  # GPU runners also print their device
    forced = prompt + teacher[:steps]
    lines = run_runner(bundle, ["logits", str(bundle), "--tokens", ",".join(map(str, forced)),
                                "--prefill", str(len(prompt))], timeout=600)
    rows = sorted((l for l in lines if "logits_f32le_b64" in l), key=lambda l: l["position"])
    assert [r["position"] for r in rows] == list(range(len(prompt) - 1, len(forced)))
    logits = np.stack([np.frombuffer(base64.b64decode(r["logits_f32le_b64"]), dtype="<f4") for r in rows])
    return logits, gen["output_ids"]


def _check_engines(bundle, folder, prompt: list[int], steps: int, engine: str):
    ref, ref_ids = hf_greedy(folder, prompt, steps)
    if engine == "python":
        got, got_ids = engine_greedy(bundle, prompt, steps)
    else:
        got, got_ids = runner_greedy(bundle, prompt, steps, ref_ids)
    err = np.abs(got - ref).max(axis=1)
    assert err.max() < TOL, f"max-abs logit error per step: {err}"
    assert got_ids == ref_ids


# ---------------------------------------------------------------- longrope across chunks


@pytest.mark.parametrize("engine", ["python", "runner"])
def test_longrope_prompt_past_the_original_window_prefilled_in_chunks(models, engine):
    folder, bundle = models("longrope")
    kv = json.loads((bundle / "manifest.json").read_text())["kv_cache"]
    prompt = _prompt(4200, seed=1)
    assert kv["prefill_chunk_size"] == 512 < len(prompt) and kv["max_total_seq_len"] == 4352
    _check_engines(bundle, folder, prompt, 4, engine)


@pytest.mark.parametrize("engine", ["python", "runner"])
def test_longrope_decode_crosses_the_original_window(models, engine):
    """A 4090-token prompt (short factors), then decode steps at positions 4090..4099: from
    position 4096 on, transformers uses the long factors."""
    folder, bundle = models("longrope")
    _check_engines(bundle, folder, _prompt(4090, seed=2), 9, engine)


def test_the_factors_matter_here(models):
    """The check above can fail: transformers' logits for the 4200-token prompt differ from
    those it gives the same model with the short factors forced (what a chunk that judged by its
    own last position used to pick)."""
    from transformers import Phi3ForCausalLM

    folder, _ = models("longrope")
    prompt = _prompt(4200, seed=1)
    model = Phi3ForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        long = model(torch.tensor([prompt])).logits[0, -1].numpy()
        rope = model.model.rotary_emb
        rope.long_inv_freq = rope.original_inv_freq  # short factors whatever the length
        short = model(torch.tensor([prompt])).logits[0, -1].numpy()
    assert np.abs(long - short).max() > 100 * TOL


# ---------------------------------------------------------------- sliding window


@pytest.mark.parametrize("engine", ["python", "runner"])
@pytest.mark.parametrize("prompt_len,steps", [(150, 8), (40, 40)])
def test_sliding_window_prefill_and_decode_past_it(models, engine, prompt_len, steps):
    """Window 64, chunks of 32: a 150-token prompt (rows inside a chunk and across chunks lose
    keys), then decoding; a 40-token prompt decoding 40 tokens across the window."""
    folder, bundle = models("window")
    kv = json.loads((bundle / "manifest.json").read_text())["kv_cache"]
    assert kv["sliding_window"] == 64 and kv["prefill_chunk_size"] == 32 and kv["max_total_seq_len"] == 4096
    _check_engines(bundle, folder, _prompt(prompt_len, seed=prompt_len), steps, engine)


@pytest.mark.parametrize("engine", ["python", "runner"])
def test_sliding_window_past_max_position_embeddings(models, engine):
    """Compiled for 4352 tokens, past the model's max_position_embeddings 4096 (its default RoPE
    and window allow it: compiler/context.py): a 4100-token prompt in chunks of 512, each longer
    than the window, then decoding at positions past 4096."""
    folder, bundle = models("window-long")
    kv = json.loads((bundle / "manifest.json").read_text())["kv_cache"]
    assert kv["max_total_seq_len"] == 4352 and kv["prefill_chunk_size"] == 512 and kv["sliding_window"] == 64
    _check_engines(bundle, folder, _prompt(4100, seed=6), 6, engine)


# ---------------------------------------------------------------- a plain prompt over two chunks


@pytest.mark.parametrize("engine", ["python", "runner"])
def test_prompt_longer_than_a_prefill_chunk(models, engine):
    folder, bundle = models("plain")
    _check_engines(bundle, folder, _prompt(600, seed=3), 4, engine)


# ---------------------------------------------------------------- float16 KV cache


def _teacher_forced(bundle, tokens: list[int], prefill: int) -> np.ndarray:
    eng = Engine(bundle)
    out = [eng.prefill(tokens[:prefill])]
    out += [eng.decode(t) for t in tokens[prefill:]]
    return np.stack(out).astype(np.float64)


@pytest.mark.parametrize("model", ["random:tiny", "window"])
def test_float16_kv_is_close_to_float32(models, model, tmp_path):
    """Teacher-forced over 160 positions (a 100-token prefill, 60 decodes): float16 KV against
    float32 KV of the same checkpoint. The runner computes the Python engine's float16 logits."""
    if model == "window":
        source, f32 = models("window")
        kw = dict(prefill_chunk=32)
    else:
        source, kw = model, {}
        f32 = compile_bundle(source, "q0f32", "host", tmp_path / "f32", kv_dtype="float32")
    f16 = compile_bundle(source, "q0f32", "host", tmp_path / "f16", kv_dtype="float16", **kw)
    m16 = json.loads((f16 / "manifest.json").read_text())["kv_cache"]
    m32 = json.loads((f32 / "manifest.json").read_text())["kv_cache"]
    assert m16["dtype"] == "float16" and m16["bytes_per_token"] * 2 == m32["bytes_per_token"]
    tokens = _prompt(160, seed=4)
    ref, got = _teacher_forced(f32, tokens, 100), _teacher_forced(f16, tokens, 100)
    report = compare_logits(ref, got)
    assert report["mean_kl"] < F16_MAX_MEAN_KL and report["top1_agreement"] >= F16_MIN_TOP1, report
    assert report["max_abs_diff"] > 0  # it is a float16 cache: not bit-equal to float32
    lines = run_runner(f16, ["logits", str(f16), "--tokens", ",".join(map(str, tokens)), "--prefill", "100"],
                       timeout=600)
    rows = sorted((l for l in lines if "logits_f32le_b64" in l), key=lambda l: l["position"])
    runner = np.stack([np.frombuffer(base64.b64decode(r["logits_f32le_b64"]), dtype="<f4") for r in rows])
    assert np.abs(runner - got).max() < TOL


def test_kv_dtype_defaults_follow_the_target():
    from edgesmith.compiler.context import default_kv_dtype
    from edgesmith.targets.presets import get_preset

    want = {"host": "float32", "arm64-linux": "float32", "arm64-linux-dotprod": "float16",
            "android-arm64": "float16", "cuda": "float16", "android-opencl": "float16"}
    assert {name: default_kv_dtype(get_preset(name)) for name in want} == want
    # a float32 quantization on a GPU keeps the cache float32: no fp16 anywhere in its bundle (PoCL)
    from edgesmith.compiler.quantization.registry import get_quantization

    assert default_kv_dtype(get_preset("linux-opencl"), get_quantization("q4f32")) == "float32"
    assert default_kv_dtype(get_preset("linux-opencl"), get_quantization("q4f16")) == "float16"


# ---------------------------------------------------------------- context: inspect, bad input


def _cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()  # what fixtures printed before is not the command's
    code = cli_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_shows_the_context_and_kv_bytes(models, capsys):
    _, bundle = models("window")
    code, out, _ = _cli(capsys, "inspect", bundle)
    assert code == 0
    # 2 layers x (K, V) x 4 kv heads x head_dim 16 x 4 bytes = 1024 bytes a token
    assert "context     4096 tokens (page 16, prefill chunk 32); sliding window 64 tokens" in out
    # the cache slides: the window's 63 keys and a prefill chunk of 32, in whole pages (96 tokens)
    assert ("kv cache    float32, 1.0 KiB per token, 0.1 MiB at the full context (the cache slides: 96 tokens "
            "of pages, not 4096)") in out


@pytest.mark.parametrize("model,context,match", [
    ("plain", 0, r"--context 0: the context must be a positive number of tokens \(at most the model's 4096\)"),
    ("window", 0, r"--context 0: the context must be a positive number of tokens \(at most the model's 131072\)"),
    ("window", -5, r"--context -5: the context must be a positive"),
    ("plain", 5000, r"--context 5000 is beyond the model's limit \(max_position_embeddings 4096\); use --context 4096"),
])
def test_compile_refuses_a_bad_context(models, tmp_path, capsys, model, context, match):
    folder, _ = models(model)
    out = tmp_path / "b"
    code, _, err = _cli(capsys, "compile", folder, "--quant", "q0f32", "-o", out, "--context", context, "-q")
    assert code == 1 and err.count("\n") == 1
    assert re.search(match, err), err
    assert not out.exists() and not list(tmp_path.glob(".b*"))  # nothing half-written


def test_gpu_bundles_go_past_the_window(models, tmp_path):
    """GPU bundles mask the window per query (tests/test_sliding_window_gpu.py runs them):
    Phi-3-mini-4k (sliding_window 2047) takes --context 4096 on every GPU target."""
    from edgesmith.compiler.context import kv_settings
    from edgesmith.compiler.models.phi3.presets import RANDOM_PRESETS
    from edgesmith.compiler.models.phi3.config import parse
    from edgesmith.targets.presets import get_preset

    cfg = parse(RANDOM_PRESETS["phi-3-mini-4k"])
    assert cfg.sliding_window == 2047 and cfg.max_position_embeddings == 4096
    for target in ("cuda", "linux-opencl", "android-opencl", "linux-vulkan"):
        kv = kv_settings(cfg, get_preset(target), 4096)
        assert (kv.context, kv.window) == (4096, 2047), target
        assert kv_settings(cfg, get_preset(target)).context == 4096  # the default too


def test_rope_limit_past_max_position_embeddings(models, capsys, tmp_path):
    """A windowed model with default RoPE may go past max_position_embeddings (4096 here) up to
    131072 positions, said and refused in one line beyond; without a window, or with longrope,
    max_position_embeddings stays the limit."""
    from edgesmith.compiler.context import kv_settings
    from edgesmith.compiler.models.phi3.config import parse
    from edgesmith.targets.presets import get_preset

    folder, _ = models("window")
    cfg = parse(json.loads((folder / "config.json").read_text()))
    assert kv_settings(cfg, get_preset("host"), 8192).context == 8192
    assert kv_settings(cfg, get_preset("cuda"), 131072).window == 64
    out = tmp_path / "b"
    code, _, err = _cli(capsys, "compile", folder, "--quant", "q0f32", "-o", out, "--context", 131073, "-q")
    assert code == 1 and err.count("\n") == 1, err
    assert "--context 131073 is beyond what this model's RoPE allows (131072 tokens" in err, err
    assert "use --context 131072 or less" in err and not out.exists()
    from edgesmith.compiler.models.phi3.presets import RANDOM_PRESETS

    plain = parse(RANDOM_PRESETS["phi-3-mini-4k"] | {"sliding_window": None})
    with pytest.raises(ConfigError, match=r"beyond the model's limit \(max_position_embeddings 4096\)"):
        kv_settings(plain, get_preset("host"), 4097)
    longrope = parse(RANDOM_PRESETS["phi-3-mini-128k"] | {"sliding_window": 64, "max_position_embeddings": 8192})
    with pytest.raises(ConfigError, match=r"longrope's factors are defined up to max_position_embeddings 8192"):
        kv_settings(longrope, get_preset("host"), 8193)


def test_a_context_beyond_the_compiled_one_is_refused_at_run_time(models, capsys):
    _, bundle = models("window")
    for engine in ("python", "runner"):
        code, _, err = _cli(capsys, "run", bundle, "--tokens", "1,2,3", "-n", "2", "--engine", engine,
                            "--context", 5000)
        assert code == 1 and err.count("\n") == 1, err
        assert "--context 5000 is larger than the 4096 tokens this bundle was compiled for" in err, err
        with pytest.raises(SystemExit) as exited:  # an argument error (exit 2), before anything runs
            _cli(capsys, "run", bundle, "--tokens", "1,2,3", "-n", "2", "--engine", engine, "--context", 0)
        err = capsys.readouterr().err
        assert exited.value.code == 2 and err.count("\n") == 1 and "--context" in err and "at least 1" in err, err


def test_a_smaller_run_time_context_sizes_the_cache(models):
    _, bundle = models("window")
    prompt = _prompt(20, seed=5)
    (small,) = run_runner(bundle, ["generate", str(bundle), "--tokens", ",".join(map(str, prompt)), "-n", "12",
                                   "--context", "32"], timeout=300)
    full = engine_greedy(bundle, prompt, 11, context=32)[1]
    assert small["output_ids"] == full
    with pytest.raises(BundleError, match=r"exceed the context of 32 tokens \(--context 32\)"):
        run_runner(bundle, ["generate", str(bundle), "--tokens", ",".join(map(str, prompt)), "-n", "13",
                            "--context", "32"], timeout=300)
    with pytest.raises(BundleError, match=r"exceeds the context of 32"):
        engine_greedy(bundle, prompt, 13, context=32)  # 20 + 13 tokens in the cache
    with pytest.raises(BundleError, match=r"^--prefill 21: it must be between 1 and the 20 tokens given$"):
        run_runner(bundle, ["logits", str(bundle), "--tokens", ",".join(map(str, prompt)), "--prefill", "21"],
                   timeout=300)


def test_profile_refuses_a_context_too_big_for_the_device(models, tmp_path):
    """A fake /proc/meminfo with room for the weights, the runtime and 2 MiB more: a 4096-token
    cache (4 MiB, no sliding window) does not fit; the refusal names the largest context that does."""
    from edgesmith.compiler.bundle.folder import read_manifest
    from edgesmith.runtime.profile.fit import DoesNotFit, largest_context, memory_need
    from edgesmith.runtime.profile.profiler import ProfileOptions, profile_bundle

    _, bundle = models("plain")
    manifest = read_manifest(bundle)
    need = memory_need(bundle, manifest, 8, 4, 4096)
    free_kb = (need["weight_bytes"] + need["runtime_bytes"]) // 1024 + 2048
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text(f"MemTotal: {4 * free_kb} kB\nMemAvailable: {free_kb} kB\n")
    best = largest_context(need, free_kb * 1024)
    assert 0 < best < 4096 and best % 16 == 0
    # what was promised fits, one page more does not
    assert memory_need(bundle, manifest, 8, 4, best)["need_bytes"] <= free_kb * 1024
    assert memory_need(bundle, manifest, 8, 4, best + 16)["need_bytes"] > free_kb * 1024
    options = dict(prompts=[8], gens=[4], reps=1, max_reps=1, membw_mb=8, kernels_top=0, cool_below=None,
                   sysroot=str(tmp_path))
    with pytest.raises(DoesNotFit, match=rf"KV cache 4\.0 for 4096 tokens .* the largest context that fits is "
                                         rf"{best} tokens: use --context {best}"):
        profile_bundle(bundle, None, ProfileOptions(**options, context=4096))
    with pytest.raises(EdgesmithError, match=r"--context 8 is shorter than the longest run \(-p plus -n = 12\)"):
        profile_bundle(bundle, None, ProfileOptions(**options, context=8))
    (rec,) = profile_bundle(bundle, None, ProfileOptions(**options, context=best))
    assert rec["memory"]["kv_context"] == best and rec["memory"]["fits"]
    assert rec["roofline"]["kv_dtype"] == "float32"


def test_fit_counts_the_window_not_the_context(models, tmp_path):
    """The window bundle's cache slides past 64 tokens: its fit estimate is the window's pages
    (63 keys + a prefill chunk of 32 = 96 tokens, 1 KiB each) at 8x the window and at the full
    context alike; with room for those, every context fits; `profile` runs 8x the window."""
    from edgesmith.compiler.bundle.folder import read_manifest
    from edgesmith.runtime.profile.fit import largest_context, memory_need
    from edgesmith.runtime.profile.profiler import ProfileOptions, profile_bundle

    _, bundle = models("window")
    manifest = read_manifest(bundle)
    sizes = {c: memory_need(bundle, manifest, 8, 4, c)["kv_cache_bytes"] for c in (32, 64, 512, 4096)}
    assert sizes == {32: 32 * 1024, 64: 64 * 1024, 512: 96 * 1024, 4096: 96 * 1024}
    need = memory_need(bundle, manifest, 8, 4, 4096)
    room = need["weight_bytes"] + need["runtime_bytes"]
    assert largest_context(need, room + 96 * 1024) == 4096
    assert largest_context(need, room + 80 * 1024) == 80  # below the window's pages: it grows as usual
    (tmp_path / "proc").mkdir()
    run = memory_need(bundle, manifest, 508, 4)  # the profile's run below: 8x the window
    assert run["kv_cache_bytes"] == 96 * 1024
    free_kb = (run["need_bytes"] + 16 * 1024) // 1024
    (tmp_path / "proc/meminfo").write_text(f"MemTotal: {4 * free_kb} kB\nMemAvailable: {free_kb} kB\n")
    options = dict(prompts=[508], gens=[4], reps=1, max_reps=1, membw_mb=8, kernels_top=0, cool_below=None,
                   sysroot=str(tmp_path))
    (rec,) = profile_bundle(bundle, None, ProfileOptions(**options))
    mem = rec["memory"]
    assert (mem["kv_context"], mem["kv_window"], mem["kv_cache_bytes"], mem["fits"]) == (512, 64, 96 * 1024, True)
