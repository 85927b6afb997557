"""The model library keeps `noalias` on every kernel that declares it (tvm_api.build_vm).

TVM 0.27's LLVM codegen emits all functions of one module with the noalias setting of the
last one by name; in a model that is a paged-KV-cache kernel without it, and every matmul
then ran about 2x slower (accumulators stored to memory after each FMA). This checks the
emitted LLVM IR itself: TVM's codegen gives a function's compute part noalias pointer
parameters exactly when the function is treated as restricted.
"""
from __future__ import annotations

import re

import pytest

import tvm  # a hard dependency (requirements.lock): missing, the test fails

from edgesmith.compiler.build import build_model, lower  # noqa: E402
from edgesmith.compiler.inputs.checkpoint import open_checkpoint  # noqa: E402
from edgesmith.compiler.quantization.registry import get_quantization  # noqa: E402
from edgesmith.targets import presets  # noqa: E402

_COMPUTE = re.compile(r"^define [^@]*@(\w+)_compute_\((.*)$", re.M)


def _llvm_modules(mod):
    if mod.kind == "llvm":
        yield mod
    for sub in mod.imports:
        yield from _llvm_modules(sub)


@pytest.fixture(scope="module")
def compute_functions() -> dict[str, bool]:
    """{kernel name: its compute function has noalias pointer parameters} over the library."""
    target = tvm.target.Target(presets.get_preset("host").tvm_target())
    ckpt = open_checkpoint("random:tiny")
    mod, _ = build_model(ckpt.config, get_quantization("q4f16"), target)
    ex = lower(mod, target)
    found = {}
    for lib in _llvm_modules(ex.mod):
        for name, params in _COMPUTE.findall(lib.inspect_source("ll")):
            found[name] = "noalias" in params
    return found


def test_every_matmul_is_noalias(compute_functions):
    matmuls = {name: noalias for name, noalias in compute_functions.items() if "matmul" in name}
    assert len(matmuls) >= 6, compute_functions  # prefill and decode: qkv, o, gate_up, down, lm_head
    assert all(matmuls.values()), {n: a for n, a in matmuls.items() if not a}


def test_norms_and_rope_are_noalias(compute_functions):
    others = {n: a for n, a in compute_functions.items() if n.startswith(("rms_norm", "rope", "fused_rope"))}
    assert others and all(others.values()), others
