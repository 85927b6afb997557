"""Compiled logits against independent references.

q0f32: transformers' Phi3ForCausalLM on the same checkpoint, step by step with its KV cache
(that is how transformers picks longrope's factors during generation), for a 16-token prefill
and 8 greedy decode steps. q4*: a numpy forward pass written here over the dequantized weights.
"""
import numpy as np
import pytest
import torch

from hf_tiny import VARIANTS, hf_continue

from edgesmith.runtime.engine import Engine

PROMPT = [5, 17, 42, 99, 7, 3, 250, 128, 64, 11, 200, 33, 8, 190, 77, 21]  # 16 tokens
DECODE_STEPS = 8


def hf_greedy_logits(folder, prompt, steps):
    from transformers import Phi3ForCausalLM

    model = Phi3ForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    logits, ids = [], []
    with torch.no_grad():
        out = hf_continue(model, prompt)
        for _ in range(steps + 1):
            step = out.logits[0, -1].numpy().astype(np.float32)
            logits.append(step)
            tok = int(np.argmax(step))
            ids.append(tok)
            out = hf_continue(model, [tok], out)
    return np.stack(logits), ids


def engine_greedy_logits(bundle, prompt, steps):
    eng = Engine(bundle)
    logits = [eng.prefill(prompt)]
    ids = []
    for _ in range(steps):
        tok = int(np.argmax(logits[-1]))
        ids.append(tok)
        logits.append(eng.decode(tok))
    ids.append(int(np.argmax(logits[-1])))
    return np.stack(logits), ids


@pytest.mark.parametrize("variant", VARIANTS)
def test_q0f32_matches_transformers(variant, tiny_ckpt_dir, compiled):
    ref, ref_ids = hf_greedy_logits(tiny_ckpt_dir(variant), PROMPT, DECODE_STEPS)
    got, got_ids = engine_greedy_logits(compiled(variant, "q0f32"), PROMPT, DECODE_STEPS)
    err = np.abs(got - ref).max(axis=1)
    assert err.max() < 1e-4, f"max-abs error per step: {err}"
    assert got_ids == ref_ids
