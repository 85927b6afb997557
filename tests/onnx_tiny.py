"""Tiny Phi-3 ONNX Runtime GenAI folders, written by ONNX Runtime GenAI's own model builder from
tests/hf_tiny.py checkpoints, plus the test's own readings of them (not through edgesmith).

    build_onnx_folder("medium", "int4", out_dir)   # -> folder with genai_config.json, model.onnx(.data)

Sizes differ from hf_tiny's in two ways the builder and ONNX Runtime need:
  intermediate 96 (not 128): the builder takes any Linear with vocab_size (256) outputs for the
      lm_head, and hf_tiny's gate_up_proj has 2 x 128 = 256 (it then wires logits to layer 0);
  phi-4-mini at hidden 128, 2 heads of 64 (rotary 48): GroupQueryAttention wants the cos table's
      width (rotary_dim / 2) a multiple of 8, and hf_tiny's rotary 12 gives 6; 2 kv heads, since
      1 would make qkv_proj 256 rows wide (medium is the GQA variant).
Longrope variants are written in the classic `rope_scaling` layout, which the builder reads.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from hf_tiny import _factors, make_tiny_checkpoint, to_classic_layout

ONNX_VARIANTS = ("mini-4k", "medium", "mini-128k", "phi-4-mini")


def overrides(variant: str) -> dict:
    out = {"intermediate_size": 96}
    if variant == "phi-4-mini":
        short, long = _factors(24)
        out.update(hidden_size=128, num_attention_heads=2, num_key_value_heads=2,  # kv 1 would give qkv 256 rows
                   rope_scaling={"rope_type": "longrope", "short_factor": short, "long_factor": long})
    return out


def make_hf_folder(variant: str, out_dir: Path) -> Path:
    folder = make_tiny_checkpoint(variant, out_dir, overrides=overrides(variant))
    if variant in ("phi-3.5-mini", "phi-4-mini"):  # make_tiny_checkpoint already rewrites mini-128k's
        to_classic_layout(folder / "config.json")
    return folder


def run_builder(hf: Path, out: Path, precision: str, cache: Path, extra: str | None = None) -> Path:
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out),
           "-p", precision, "-e", "cpu", "-c", str(cache)]
    if extra:
        cmd += ["--extra_options", *extra.split()]  # "key=value key=value"
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0 or not (out / "genai_config.json").is_file():
        raise RuntimeError(f"the ONNX Runtime GenAI builder failed ({r.returncode}): {r.stderr[-2000:]}")
    return out


# ---------------------------------------------------------------- the test's own readings


def load_initializers(folder: Path) -> dict[str, np.ndarray]:
    """Every initializer and Constant (If branches included), read by onnx itself with its data."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(Path(folder) / "model.onnx"))  # loads the external data too: tests only
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}

    def constants(graph):
        for node in graph.node:
            for a in node.attribute:
                if node.op_type == "Constant" and a.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(a.t)
                if a.type == onnx.AttributeProto.GRAPH:
                    constants(a.g)

    constants(model.graph)
    return out


def matmulnbits_dequantize(codes: np.ndarray, scales: np.ndarray, k: int, block: int) -> np.ndarray:
    """ONNX Runtime's MatMulNBits weight, element by element from the op's definition:
    B uint8 [N, ceil(K/block), block/2]; element k of row n is in byte k//2 of its block row, the
    low nibble for even k; value = (nibble - 8) * scale[n, k // block] (no zero points: 8).
    Returns W^T as float32 [N, K]."""
    n = codes.shape[0]
    flat = codes.reshape(n, -1).astype(np.int64)
    nib = np.empty((n, flat.shape[1] * 2), dtype=np.int64)
    nib[:, 0::2] = flat & 0xF
    nib[:, 1::2] = flat >> 4
    s = scales.reshape(n, -1).astype(np.float32)
    out = np.empty((n, k), dtype=np.float32)
    for kk in range(k):
        out[:, kk] = np.float32(nib[:, kk] - 8) * s[:, kk // block]
    return out


def ort_matmulnbits_weight(codes: np.ndarray, scales: np.ndarray, k: int, block: int) -> np.ndarray:
    """ONNX Runtime's own dequantization: one MatMulNBits node (accuracy level 0, float32) applied
    to the identity, whose output is the weight itself. Returns [N, K] float32."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    n = codes.shape[0]
    node = helper.make_node("MatMulNBits", ["A", "B", "S"], ["Y"], domain="com.microsoft", K=k, N=n, bits=4,
                            block_size=block, accuracy_level=0)
    graph = helper.make_graph([node], "dequantize", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [k, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [k, n])],
                              [numpy_helper.from_array(codes, "B"), numpy_helper.from_array(scales, "S")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"A": np.eye(k, dtype=np.float32)})[0].T.copy()


def ort_teacher_forced_logits(folder: Path, ids: list[int]) -> np.ndarray:
    """ONNX Runtime GenAI on the folder, one token appended per step: logits (len(ids), vocab)."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + 1)
    gen = og.Generator(model, params)
    out = []
    for tok in ids:
        gen.append_tokens([tok])
        out.append(np.array(gen.get_output("logits"), dtype=np.float64).reshape(-1))
    return np.stack(out)


def ort_greedy(folder: Path, prompt: list[int], n: int) -> list[int]:
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt) + n, min_length=len(prompt) + n)
    gen = og.Generator(model, params)
    gen.append_tokens(prompt)
    while not gen.is_done():
        gen.generate_next_token()
    return [int(t) for t in gen.get_sequence(0)[len(prompt):]]
