"""The one place that names TVM's moving modules (0.27: tvm.s_tir, tvm.tirx, tvm.script.tirx,
tvm.support, tvm.relax.frontend.nn and its llm kernels).

When the next TVM release renames them again, this file is the change. Kernel files write
TVMScript as `from edgesmith.targets.tvm_api import tir_script as T` (T is TVMScript's name).
"""
from __future__ import annotations

import tvm
from tvm import relax, te, tirx  # noqa: F401  (re-exported)
from tvm.relax.frontend import nn  # noqa: F401
from tvm.relax.frontend.nn.llm import _decode_kernels as llm_decode_kernels  # noqa: F401
from tvm.relax.frontend.nn.llm import _kernel_common as llm_kernel_common  # noqa: F401
from tvm.relax.frontend.nn.llm import _prefill_kernels as llm_prefill_kernels  # noqa: F401
from tvm.relax.frontend.nn.llm import kv_cache as kv_cache_mod  # noqa: F401
from tvm.s_tir import SBlockRealize  # noqa: F401
from tvm.s_tir import Schedule  # noqa: F401
from tvm.s_tir import dlight  # noqa: F401
from tvm.s_tir import transform as s_tir_transform  # noqa: F401
from tvm.s_tir.dlight.analysis import collect_vars_used_in_prim_expr  # noqa: F401
from tvm.script import tirx as tir_script  # noqa: F401

TVM_VERSION: str = tvm.__version__


def host_cpu_name() -> str:
    """LLVM's name for this machine's CPU (LLVM 22 rejects mcpu=native)."""
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


def create_shared(output: str, objects: list[str], options: list[str], cc: str) -> None:
    """Link `objects` into the shared library `output` with compiler `cc` (tvm.support.cc); a
    failed link raises RuntimeError carrying the compiler's output."""
    from tvm.support import cc as tvm_cc

    tvm_cc.create_shared(output, objects, options=options, cc=cc)


def dump_tensor_cache(params: dict, out_dir: str, meta_data: dict | None = None) -> None:
    """TVM's tensor-cache writer, always lossless (its default encoding is f32-to-bf16)."""
    from tvm.contrib import tvmjs

    import contextlib, io

    with contextlib.redirect_stdout(io.StringIO()):  # it prints progress lines of its own
        tvmjs.dump_tensor_cache(params, out_dir, encode_format="raw", meta_data=meta_data, show_progress=False)


def build_vm(mod, target, relax_pipeline):
    """`tvm.compile` for a Relax module, with the TIR functions linked in two LLVM modules:
    those marked `tirx.noalias` and those not.

    Why: TVM 0.27's LLVM codegen declares every function of a module before emitting any, and
    the declaration sets a codegen-wide "restricted" flag, so every function is emitted with
    the noalias setting of the last one by symbol name. In a model that is one of the paged KV
    cache's kernels, which are not noalias: every matmul then lost `noalias`, LLVM could not
    keep the register tile's accumulators in registers (a store after every FMA) and prefill
    ran 2.4x slower than the same kernel built alone. Built per group, each function gets its
    own setting, as TVM means it to. (CPU targets only: a GPU target's kernels are device
    code, and one host module keeps one device module to package.)
    """
    from tvm.relax import vm_build

    with target:
        mod = relax_pipeline(mod)
    attrs = dict(mod.attrs) if mod.attrs else {}
    ext_libs, params = attrs.get("external_mods", []), dict(attrs.get("const_name_to_constant", {}))
    builder = relax.ExecBuilder()
    leftover = vm_build._vmcodegen(builder, mod, "bytecode")
    funcs = {g: f for g, f in leftover.functions.items() if isinstance(f, tirx.PrimFunc)}
    if target.kind.name == "llvm":
        groups = [{g: f for g, f in funcs.items() if _noalias(f) == flag} for flag in (True, False)]
    else:  # GPU: the kernels are in the device module; host code is launch glue, one module
        groups = [funcs]
    libs = [tirx.build(vm_build._auto_attach_system_lib_prefix(tvm.IRModule(g, attrs=leftover.attrs), target),
                       target=target) for g in groups if g]
    lib = libs[0] if libs else None
    for other in libs[1:]:
        lib.import_module(other)
    for ext in ext_libs:  # as relax.build: device modules go under the TIR library
        if vm_build._is_device_module(ext):
            lib.import_module(ext)
    relax_ext = [e for e in ext_libs if not vm_build._is_device_module(e)]
    return relax.VMExecutable(vm_build._ffi_api.VMLink(builder, target, lib, relax_ext, params))


def _noalias(func) -> bool:
    return bool(func.attrs and func.attrs.get("tirx.noalias", False))
