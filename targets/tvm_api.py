"""The one place that names TVM's moving modules (0.27: tvm.s_tir, tvm.tirx, tvm.support).

When the next TVM release renames them again, this file is the change.
"""
from __future__ import annotations

import tvm
from tvm import relax, te, tirx  # noqa: F401  (re-exported)
from tvm.relax.frontend import nn  # noqa: F401
from tvm.relax.frontend.nn.llm import kv_cache as kv_cache_mod  # noqa: F401
from tvm.s_tir import Schedule  # noqa: F401
from tvm.s_tir import dlight  # noqa: F401
from tvm.s_tir import transform as s_tir_transform  # noqa: F401

TVM_VERSION: str = tvm.__version__


def host_cpu_name() -> str:
    """LLVM's name for this machine's CPU (LLVM 22 rejects mcpu=native)."""
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


def dump_tensor_cache(params: dict, out_dir: str, meta_data: dict | None = None) -> None:
    """TVM's tensor-cache writer, always lossless (its default encoding is f32-to-bf16)."""
    from tvm.contrib import tvmjs

    import contextlib, io

    with contextlib.redirect_stdout(io.StringIO()):  # it prints progress lines of its own
        tvmjs.dump_tensor_cache(params, out_dir, encode_format="raw", meta_data=meta_data, show_progress=False)
