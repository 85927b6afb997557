"""The lowering pipeline: one phased list of passes, with an IR dump after each phase.

(attention: our CPU attention kernels on llvm; two GPU kernels fixed for OpenCL, one for WebGPU;
the GPU kernels' dead inline-RoPE branch folded) ->
legalize -> fuse -> schedule (our CPU rules, then dlight's) -> lower to the VM.
`tvm.compile`'s default pipeline neither fuses nor schedules, so we pass this one instead.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import tvm
from edgesmith.compiler.kernels.family import is_gpu
from edgesmith.targets.tvm_api import relax


def _phases(target, sliding_window: int = 0, tuning=None, cuda_graph: bool = False) -> list[tuple[str, list]]:
    from edgesmith.compiler.lowering import attention_swap
    from edgesmith.compiler.kernels import attention_gpu, attention_opencl, attention_webgpu
    from edgesmith.compiler.lowering import schedules_cpu as schedules
    from edgesmith.compiler.lowering import schedules_gpu
    from edgesmith.compiler.kernels.rope_split import RopeInKVSplit

    rt = relax.transform
    # llvm: our attention kernels in place of TVM's scalar ones, which also apply the sliding window;
    # opencl: two of TVM's GPU kernels made right without lock-step warps (kernels/attention_opencl.py),
    # the merge one of them on webgpu (kernels/attention_webgpu.py); every GPU target: TVM's prefill
    # kernels masking the sliding window per query, and TVM's kernels without their dead inline-RoPE
    # branch, which TVM's CSE miscompiles for small grouped heads (kernels/attention_gpu.py)
    tuning = tuning or schedules.DEFAULT
    gpu_window = [] if target.kind.name == "opencl" else [attention_gpu.WindowGPUAttention(sliding_window)]
    gpu_fix = gpu_window + [attention_gpu.FoldGPUAttentionRope, RopeInKVSplit] if is_gpu(target) else []
    attention = {"llvm": [attention_swap.ReplaceCPUAttention(sliding_window, tuning)],
                 "opencl": [attention_opencl.ReplaceOpenCLAttention(sliding_window)],
                 "webgpu": [attention_webgpu.ReplaceWebGPUAttention]}.get(target.kind.name, []) + gpu_fix
    attention = [("attention", attention)] if attention else []
    return attention + [
        ("legalize", [
            relax.backend.DispatchSampling(),
            relax.backend.DispatchSortScan(),
            rt.LegalizeOps(),
            rt.AnnotateTIROpPattern(),
            rt.FoldConstant(),
        ]),
        ("fuse", [rt.FuseOps(), rt.FuseTIR(), rt.DeadCodeElimination()]),
        ("schedule", schedules_gpu.passes(target, tuning) if is_gpu(target)
         else [schedules.apply(target, tuning)]),
        ("lower", [
            rt.RewriteDataflowReshape(),
            rt.ToNonDataflow(),
            rt.RemovePurityChecking(),
            rt.CallTIRRewrite(),
            rt.StaticPlanBlockMemory(),
            # CUDA graphs: every run of static-shape kernels between the KV cache's calls becomes one
            # graph, captured on its first call and replayed after (vm.builtin.cuda_graph.run_or_capture)
            *([rt.RewriteCUDAGraph()] if cuda_graph else []),
            rt.LowerAllocTensor(),
            rt.KillAfterLastUse(),
            rt.LowerRuntimeBuiltin(),
            rt.ComputePrimValue(),
            rt.VMShapeLower(),
            rt.AttachGlobalSymbol(),
        ]),
    ]


def make_pipeline(target, dump_dir: Path | None = None, *, sliding_window: int = 0, tuning=None,
                  launches: dict | None = None, cuda_graph: bool = False):
    """A module pass running every phase under `target`; dumps `NN-phase.py` scripts when asked.
    sliding_window: the attention's window (0: none), applied by the attention kernels.
    tuning: compiler/tuning.Tuning for the CPU schedule's and the GPU GEMVs' choices (None: the defaults).
    launches: a GPU target's dict to fill with the kernels a decoded token launches
    (lowering/launches.py), read from the lowered module.
    cuda_graph: a CUDA target's decode and prefill replay their static-shape kernel runs as CUDA
    graphs (TVM's RewriteCUDAGraph, which acts only under its PassContext option; compile_bundle
    refuses it for any other target)."""

    @tvm.transform.module_pass(opt_level=0, name="edgesmith_pipeline")
    def _pipeline(mod: tvm.ir.IRModule, _ctx) -> tvm.ir.IRModule:
        config = tvm.transform.PassContext(config={"relax.backend.use_cuda_graph": True}) if cuda_graph else None
        with target, (config if config is not None else contextlib.nullcontext()):
            for i, (name, passes) in enumerate(_phases(target, sliding_window, tuning, cuda_graph)):
                mod = tvm.transform.Sequential(passes, name=name)(mod)
                if dump_dir is not None:
                    dump_dir.mkdir(parents=True, exist_ok=True)
                    (dump_dir / f"{i:02d}-{name}.py").write_text(mod.script(show_meta=False))
        if launches is not None and is_gpu(target):
            from edgesmith.compiler.lowering.launches import decode_launches

            launches.update(decode_launches(mod, sliding=bool(sliding_window)) or {})
        return mod

    return _pipeline
