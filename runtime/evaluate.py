"""`compile --eval`: how far quantization moved the model, measured against a q0f32 twin.

Both bundles run teacher-forced over the same fixed token sequence (one decode step per position);
the reference keeps a float32 KV cache, so a float16 cache's rounding is part of what is measured;
reported: top-1 agreement of the next-token choice, mean KL(p_q0f32 || p_quant) in nats, and the
largest logit difference. The result is stored in the bundle's manifest (shown by `inspect`).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from edgesmith.compiler import bundle as bundle_io
from edgesmith.compiler.build import compile_bundle
from edgesmith.runtime.engine import Engine
from edgesmith.targets.presets import host_arch

EVAL_POSITIONS = 32


def teacher_forced_logits(bundle: Path, ids: list[int]) -> np.ndarray:
    eng = Engine(bundle)
    out = [eng.prefill(ids[:1])]
    for tok in ids[1:]:
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
    vocab = manifest["model"]["config"]["vocab_size"]
    ids = np.random.default_rng(0).integers(0, vocab, positions).tolist()
    with tempfile.TemporaryDirectory(prefix="edgesmith-eval-") as tmp:
        quantized = bundle
        if manifest["arch"] != host_arch():
            step(f"eval: compiling a host twin of the {manifest['quant']} bundle")
            quantized = compile_bundle(model, manifest["quant"], "host", Path(tmp) / "quant",
                                       quantize_embedding=manifest.get("quantize_embedding", True),
                                       kv_dtype=manifest["kv_cache"].get("dtype", "float32"))
        step("eval: compiling the q0f32 reference")
        reference = compile_bundle(model, "q0f32", "host", Path(tmp) / "ref")
        step(f"eval: {positions} positions, teacher-forced")
        report = compare_logits(teacher_forced_logits(reference, ids), teacher_forced_logits(quantized, ids))
    manifest["eval"] = report
    tmp_manifest = bundle / f".{bundle_io.MANIFEST}.tmp"
    tmp_manifest.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp_manifest, bundle / bundle_io.MANIFEST)
    return report
