"""`profile --check`: does the device compute what the host computes?

The device runs a fixed token sequence teacher-forced (`runner logits --prefill`: a prompt of
PREFILL tokens prefilled at once, the user's path through the prefill kernels, then one decode per
token, each reading the KV cache the prefill wrote); the reference is independent
of the device build: the same model and quantization compiled for the host (cached by model
fingerprint) and run by TVM's Python VM (runtime/engine.py). Same weights, same quantization,
another compile and another engine: what differs is float rounding, unless a driver, a kernel
or the weights on the device are broken.
"""
from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

from edgesmith.errors import EdgesmithError

POSITIONS = 16          # decode steps after the prompt
PREFILL = 37            # prompt tokens prefilled at once (not a multiple of the prefill GEMMs' token tiles)
SEED = 20240607
MAX_MEAN_KL = 1e-3      # nats; float rounding gives ~1e-9, a broken kernel or weight far more
MIN_TOP1 = 0.9          # one near-tie flipping in 16 positions is rounding, more is not


class CheckFailed(EdgesmithError):
    """The device's logits differ from the host reference beyond rounding."""

    exit_code = 3


def check_tokens(vocab: int, positions: int = POSITIONS) -> list[int]:
    return np.random.default_rng(SEED).integers(0, vocab, positions).tolist()


def check_sequence(vocab: int, context: int) -> tuple[list[int], int]:
    """(token ids, how many of them are prefilled): PREFILL + POSITIONS tokens, the prompt shortened
    where the bundle's context is smaller (at least one token prefilled)."""
    total = min(PREFILL + POSITIONS, context)
    return check_tokens(vocab, total), max(1, total - POSITIONS)


def reference_source(manifest) -> str:
    """The `compile` argument that rebuilds the bundle's model: the manifest's model.spec."""
    spec = manifest.model.spec
    if spec and (spec.startswith("random:") or Path(spec).exists()):
        return spec
    where = f"{spec} is not on this machine" if spec else "the bundle predates model.spec"
    raise EdgesmithError(f"cannot rebuild the bundle's model for the host reference ({where}); pass --reference "
                         "MODEL (the checkpoint it was compiled from)")


def reference_bundle(manifest, source: str | None = None, progress=None) -> Path:
    """A host bundle of the same model and quantization, compiled once and cached."""
    from edgesmith.compiler.bundle.folder import read_manifest
    from edgesmith.compiler.bundle.provenance import cached_bundle

    fp = manifest.model.fingerprint
    emb = manifest.quantize_embedding
    head = emb if manifest.quantize_lm_head is None else manifest.quantize_lm_head  # bundles before it: as the embedding
    kv_dtype = manifest.kv_dtype  # the same cache: rounding apart, the same logits
    say = (lambda msg: progress(f"check: host reference: {msg}")) if progress else None
    # keyed by all that makes it (compiler sources and TVM version included): never a stale reference;
    # the checkpoint is opened only to compile it (by the bundle's own fingerprint unless --reference)
    out = cached_bundle(source or (lambda: reference_source(manifest)), manifest.quant, "host", cache="reference",
                        fingerprint=None if source else fp, progress=say,
                        options={"quantize_embedding": emb, "quantize_lm_head": head, "kv_dtype": kv_dtype}).path
    got = read_manifest(out).model.fingerprint
    if got != fp:
        raise EdgesmithError(f"the host reference at {out} is of another model (fingerprint {got[:12]}..., the bundle's "
                             f"is {fp[:12]}...); pass --reference with the bundle's checkpoint")
    return out


def device_logits(lines: list[dict]) -> np.ndarray:
    """(positions, vocab) float64 from the runner's `logits` lines."""
    rows = sorted((l for l in lines if "logits_f32le_b64" in l), key=lambda l: l["position"])
    return np.stack([np.frombuffer(base64.b64decode(l["logits_f32le_b64"]), dtype="<f4") for l in rows]).astype(
        np.float64)


def assess(ref: np.ndarray, got: np.ndarray) -> dict:
    from edgesmith.runtime.evaluate import compare_logits

    if ref.shape != got.shape:
        return {"passed": False, "reasons": [f"device gave logits of shape {got.shape}, the reference {ref.shape}"]}
    if not np.isfinite(got).all():
        bad = int((~np.isfinite(got)).sum())
        return {"positions": ref.shape[0], "passed": False, "reasons": [f"{bad} logits are NaN or infinite"],
                "max_abs_diff": None, "mean_kl": None, "top1_agreement": None}
    report = compare_logits(ref, got)
    reasons = []
    if report["mean_kl"] > MAX_MEAN_KL:
        reasons.append(f"mean KL {report['mean_kl']:.3g} nats > {MAX_MEAN_KL:g}")
    if report["top1_agreement"] < MIN_TOP1:
        reasons.append(f"top-1 agreement {100 * report['top1_agreement']:.0f}% < {100 * MIN_TOP1:.0f}%")
    # Row 0 is the prompt's own (the prefill kernels): one row of the mean would hide it; a wrong
    # prefill also moves every later row, through the KV cache it wrote.
    first = compare_logits(ref[:1], got[:1])
    report["prefill_row"] = {"kl": first["mean_kl"], "max_abs_diff": first["max_abs_diff"],
                             "top1_equal": first["top1_agreement"] == 1.0}
    if first["mean_kl"] > MAX_MEAN_KL:
        reasons.append(f"the prefilled prompt's logits: KL {first['mean_kl']:.3g} nats > {MAX_MEAN_KL:g}")
    return dict(report, passed=not reasons, reasons=reasons)


def run_check(session, manifest, *, reference: str | None = None, verify: bool = True, progress=None) -> dict:
    """Logits on the device vs the host reference; the report (raises nothing: the caller decides)."""
    from edgesmith.runtime.evaluate import teacher_forced_logits

    ids, prefill = check_sequence(manifest.config.vocab_size, manifest.kv_cache.max_total_seq_len)
    ref_bundle = reference_bundle(manifest, reference, progress)
    if progress:
        progress(f"check: a {prefill}-token prompt and {len(ids) - prefill} decode steps on "
                 f"'{session.device.name}' and on the host reference")
    args = ["logits", "--tokens", ",".join(map(str, ids)), "--prefill", prefill, "--context", len(ids)]
    got = device_logits(session.runner(args + ([] if verify else ["--no-verify"])))
    ref = teacher_forced_logits(ref_bundle, ids, prefill)
    return dict(assess(ref, got), reference={"bundle": str(ref_bundle), "engine": "python (relax VM)",
                                              "target": "host"}, tokens=ids, prefill=prefill)


def failure_message(device: str, report: dict) -> str:
    prompt = f", a {report['prefill']}-token prompt then decode steps," if report.get("prefill") else ""
    return (f"accuracy check FAILED on device '{device}': {'; '.join(report['reasons'])} "
            f"(max |logit diff| {report.get('max_abs_diff')}, over {report.get('positions')} positions{prompt} vs the "
            "host reference); the device's kernels, driver or weights are broken")
