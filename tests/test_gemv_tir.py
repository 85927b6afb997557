"""kernels_gemv: decode's float-activation int4 GEMV (q4f16/q4f32 on CPU targets) equals the
layer computed by numpy over the dequantized weights."""
from __future__ import annotations

import numpy as np
import pytest

import tvm  # a hard dependency (requirements.lock): missing, the test fails

from edgesmith.compiler.kernels import gemv as kernels_gemv  # noqa: E402
from edgesmith.compiler.quantization.registry import dequantize_q4, quantize_q4  # noqa: E402
from edgesmith.targets import presets  # noqa: E402


@pytest.mark.parametrize("n,k,scale_dtype", [(48, 256, "float16"), (37, 512, "float32"), (20, 64, "float16"),
                                             (16, 96, "float32")])  # 96: 12 words, lanes of 4
def test_gemv_matches_numpy_over_dequantized_weights(n, k, scale_dtype):
    # 37 and 20 rows: the last parallel task of 16 rows is partial
    assert kernels_gemv.applies(k, 32)
    target = tvm.target.Target(presets.get_preset("host").tvm_target())
    func = kernels_gemv.q4_gemv(n, k, 32, scale_dtype).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
    rng = np.random.default_rng(n)
    x = rng.standard_normal((1, 1, k)).astype(np.float32)
    packed, scale = quantize_q4((rng.standard_normal((n, k)) * 0.05).astype(np.float32), 32, scale_dtype)
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.full((1, 1, n), np.nan, np.float32), dev)
    lib["main"](*[tvm.runtime.tensor(a, dev) for a in (x, packed, scale)], out)
    want = dequantize_q4(packed, scale, 32) @ x[0, 0]
    np.testing.assert_allclose(out.numpy()[0, 0], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_shapes_it_does_not_tile_keep_the_expression():
    assert not kernels_gemv.applies(16, 32)  # 2 words: fewer than 4 lanes
    assert not kernels_gemv.applies(128, 48)  # groups of 6 words do not fit whole in vectors
