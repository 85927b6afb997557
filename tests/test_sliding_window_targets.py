"""Sliding window beyond the host, against transformers: arm64 under qemu (our CPU kernels,
cross-built), and GPU bundles: OpenCL on PoCL and Vulkan (TVM's WebGPU kernels) on lavapipe, both
on this CPU. (The host's own: test_long_context.py.)

The checkpoint is test_long_context.py's "window" one (Phi-3-mini-4k-shaped, sliding_window 64),
compiled q0f32 (float32 weights, activations and KV cache on the GPU too) with a context of 512,
8x the window, so the cache slides (compiler/context.py): on a GPU the window's keys are masked
per query by TVM's prefill kernels rebuilt in compiler/kernels/attention_gpu.py. Prefill chunks of 32
(a 150-token prompt takes five, rows inside a chunk and across chunks lose keys) and of 96, longer
than the window (a chunk's late rows lose the chunk's own early keys and every cached one).
Reference: transformers prefilling the prompt in one forward, then decoding greedily.
"""
from __future__ import annotations

import numpy as np
import pytest

from hf_tiny import make_tiny_checkpoint
from lavapipe import needs_lavapipe
from pocl import needs_pocl
from test_long_context import WINDOW, _prompt, hf_greedy, runner_greedy

from edgesmith.compiler.build import compile_bundle
from edgesmith.compiler.bundle.folder import read_manifest

pytestmark = pytest.mark.slow

TOL = 1e-4  # q0f32, float32 throughout: the bound, on every target (lavapipe's too)
CONTEXT = 512
OPENCL = pytest.param("linux-opencl", marks=needs_pocl)
VULKAN = pytest.param("linux-vulkan", marks=needs_lavapipe)
TARGETS = ["arm64-linux", OPENCL, VULKAN]


@pytest.fixture(scope="module")
def window_bundles(tmp_path_factory):
    """(target, prefill chunk) -> (checkpoint folder, q0f32 bundle), made on first use."""
    root = tmp_path_factory.mktemp("window-gpu")
    ckpt = make_tiny_checkpoint("mini-4k", root / "ckpt", overrides=WINDOW)
    made = {}

    def get(target: str, chunk: int):
        if (target, chunk) not in made:
            made[target, chunk] = compile_bundle(ckpt, "q0f32", target, root / f"{target}-{chunk}",
                                                 context=CONTEXT, prefill_chunk=chunk)
        return ckpt, made[target, chunk]

    return get


def _cases():
    """(target, chunk, prompt length, decode steps): every target with chunks of 32; chunks
    longer than the window on the GPUs (arm64 runs the host's CPU kernels, whose chunks of 512
    past the window test_long_context.py checks)."""
    for target in TARGETS:
        marks = getattr(target, "marks", ())
        name = target.values[0] if marks else target
        yield from (pytest.param(name, 32, 150, 6, marks=marks), pytest.param(name, 32, 40, 40, marks=marks))
        if name != "arm64-linux":
            yield pytest.param(name, 96, 200, 4, marks=marks)


@pytest.mark.parametrize("target,chunk,prompt_len,steps", list(_cases()))
def test_window_matches_transformers(window_bundles, target, chunk, prompt_len, steps):
    folder, bundle = window_bundles(target, chunk)
    kv = read_manifest(bundle).kv_cache
    assert kv.sliding_window == 64 and kv.max_total_seq_len == CONTEXT and kv.prefill_chunk_size == chunk
    prompt = _prompt(prompt_len, seed=prompt_len)
    ref, ref_ids = hf_greedy(folder, prompt, steps)
    got, got_ids = runner_greedy(bundle, prompt, steps, ref_ids)
    err = np.abs(got - ref).max(axis=1)
    assert err.max() < TOL, f"max-abs logit error per step: {err}"
    assert got_ids == ref_ids
