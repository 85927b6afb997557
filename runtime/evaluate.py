"""`compile --eval`: how far quantization moved the model, measured against a q0f32 twin.

Both bundles run teacher-forced over the same fixed token sequence (one decode step per position);
the reference keeps a float32 KV cache, so a float16 cache's rounding is part of what is measured;
reported: top-1 agreement of the next-token choice, mean KL(p_q0f32 || p_quant) in nats, and the
largest logit difference. The result is stored in the bundle's manifest (shown by `inspect`).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgesmith.compiler.bundle import folder as bundle_io
from edgesmith.compiler.build import compile_bundle
from edgesmith.compiler.bundle.manifest import EvalReport
from edgesmith.compiler.quantization.registry import get_quantization
from edgesmith.runtime.engine import Engine
from edgesmith.targets.presets import host_arch

EVAL_POSITIONS = 32

# What --eval measures on the random presets (2 layers; tiny whole), 32 positions, by
# bench/quant_accuracy.py on 2026-11-28: {preset: {quant: (top-1, mean KL)}}. Random weights give
# nearly flat logits, so top-1 says little there; mean KL is the steadier number.
TYPICAL = {
    "tiny": {"q4f16": (0.656, 0.0014), "q4f16i8": (0.688, 0.0014), "q4f32": (0.656, 0.0014)},
    "phi-3-mini-4k": {"q4f16": (0.219, 0.1337), "q4f16i8": (0.219, 0.1340), "q4f32": (0.188, 0.1341)},
    "phi-4-mini": {"q4f16": (0.094, 0.1566), "q4f16i8": (0.125, 0.1567), "q4f32": (0.125, 0.1562)},
}


def guidance(report: dict, quant: str, source: str) -> str:
    """What the numbers mean for this scheme (`quant`) and model (`source`, the manifest's
    model.source): what is typical, and what would be a problem."""
    if not get_quantization(quant).quantized:
        return "float weights: expect a mean KL near 0 (rounding); anything above 0.01 nats is a problem"
    preset = source.split(":")[1].split(" ")[0] if source.startswith("random:") else None
    if preset in TYPICAL and quant in TYPICAL[preset]:
        top1, kl = TYPICAL[preset][quant]
        layers = "" if preset == "tiny" else " (2 layers)"
        verdict = "as expected" if report["mean_kl"] <= 2 * kl + 0.01 else "ABOVE what is typical: a problem"
        return (f"typical for {quant} on random:{preset}{layers}: mean KL {kl:.4f}, top-1 {100 * top1:.0f}% "
                f"(random weights give nearly flat logits, so top-1 says little); this bundle is {verdict}; "
                "more than twice the typical KL would point to a broken kernel or scale")
    return (f"int4 in groups of 32 ({quant}): on a trained checkpoint most next-token choices should stay (top-1 "
            "well above half); q4f16i8's KL within ~10% of q4f16's on the same model (measured on the random "
            "presets); a KL several times q4f32's or top-1 near chance points to a damaged checkpoint or a bug. "
            "No trained checkpoint was measured here: compare with `--quant q4f32` on your model")


def teacher_forced_logits(bundle: Path, ids: list[int], prefill: int = 1) -> np.ndarray:
    """(len(ids) - prefill + 1, vocab) float64: the first `prefill` tokens prefilled at once (row 0,
    position prefill - 1: the prefill kernels, in the bundle's chunks), then one decode per token,
    each attending over the prefill's KV cache. The runner's `logits --prefill` computes the same
    rows on a device. prefill 1 checks the decode kernels only; a real prompt checks the GEMMs."""
    if not 1 <= prefill <= len(ids):
        raise ValueError(f"prefill {prefill}: it must be between 1 and the {len(ids)} tokens given")
    eng = Engine(bundle)
    out = [eng.prefill(ids[:prefill])]
    for tok in ids[prefill:]:
        out.append(eng.decode(tok))
    return np.stack(out).astype(np.float64)


def compare_logits(ref: np.ndarray, got: np.ndarray) -> dict:
    def log_softmax(z):
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    lp, lq = log_softmax(ref), log_softmax(got)
    kl = (np.exp(lp) * (lp - lq)).sum(axis=-1)
    return {
        "positions": int(ref.shape[0]),
        "top1_agreement": float((ref.argmax(-1) == got.argmax(-1)).mean()),
        "mean_kl": float(kl.mean()),
        "max_abs_diff": float(np.abs(ref - got).max()),
    }


def evaluate_bundle(bundle: Path, model: str, *, positions: int = EVAL_POSITIONS, progress=None) -> dict:
    bundle = Path(bundle)
    manifest = bundle_io.read_manifest(bundle)
    step = progress.step if progress else (lambda msg: None)
    vocab = manifest.config.vocab_size
    ids = np.random.default_rng(0).integers(0, vocab, positions).tolist()
    with tempfile.TemporaryDirectory(prefix="edgesmith-eval-") as tmp:
        quantized = bundle
        if manifest.arch != host_arch():
            step(f"eval: compiling a host twin of the {manifest.quant} bundle")
            quantized = compile_bundle(model, manifest.quant, "host", Path(tmp) / "quant",
                                       quantize_embedding=manifest.quantize_embedding,
                                       quantize_lm_head=manifest.quantize_lm_head, kv_dtype=manifest.kv_dtype)
        step("eval: compiling the q0f32 reference")
        reference = compile_bundle(model, "q0f32", "host", Path(tmp) / "ref")
        step(f"eval: {positions} positions, teacher-forced")
        report = compare_logits(teacher_forced_logits(reference, ids), teacher_forced_logits(quantized, ids))
    manifest.update(bundle, eval=EvalReport(**report))
    return report
