"""compile: checkpoint -> quantized weights + lowered model library -> bundle folder."""
from __future__ import annotations

import dataclasses
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tvm
from edgesmith import __version__
from edgesmith.compiler.bundle import folder as bundle_io
from edgesmith.compiler.lowering import kernel_sources
from edgesmith.compiler.inputs.checkpoint import Checkpoint, default_quant, open_checkpoint, quantized_ends, validate
from edgesmith.compiler.context import PAGE_SIZE, kv_settings
from edgesmith.compiler.bundle.manifest import BuildInfo, DeviceInfo, Manifest, ModelInfo, TargetInfo, TokenizerInfo
from edgesmith.compiler.convert import convert_params
from edgesmith.compiler.inputs import tokenizer_files
from edgesmith.compiler.kernels.family import check_quant, kernel_family
from edgesmith.compiler.models import for_config
from edgesmith.compiler.lowering.pipeline import make_pipeline
from edgesmith.compiler.quantization.registry import Quantization, get_quantization
from edgesmith.compiler.tuning import (DEFAULT, Tuning, TuningError, TuningRecord, manifest_entry,
                                       model_shape_id)
from edgesmith.errors import ConfigError, TargetError
from edgesmith.targets import presets
from edgesmith.targets.tvm_api import TVM_VERSION, build_vm, dump_tensor_cache

PREFILL_CHUNK = 512


@dataclass
class Progress:
    """Hooks the CLI fills with progress bars; the default prints nothing."""

    step: Callable[[str], None] = lambda msg: None
    tensors: Callable[[int], Callable[[], None]] = lambda total: (lambda: None)


def build_model(cfg, quant: Quantization, target: tvm.target.Target, *, quantize_embedding: bool = True,
                quantize_lm_head: bool | None = None, kv_dtype: str = "float32", tuning: Tuning | None = None,
                gpu_fusion: bool = True, sliding_window: int = 0):
    """The Relax module and its parameter list [(name, shape, dtype)] for a config (its
    architecture's nn model, from the model registry). tuning: the kernels' choices (None: defaults).
    quantize_lm_head None: as quantize_embedding."""
    model_class = for_config(cfg).model_class()
    extra = {"tuning": tuning} if tuning is not None else {}
    if not gpu_fusion:
        extra["gpu_fusion"] = False  # the unfused GPU bundle (tests compare the fused one with it)
    if sliding_window:
        extra["sliding_window"] = sliding_window
    if quantize_lm_head is not None and quantize_lm_head != quantize_embedding:
        extra["quantize_lm_head"] = quantize_lm_head  # only when it differs: older model classes lack it
    model = model_class(cfg, quant, quantize_embedding=quantize_embedding, target=target, kv_dtype=kv_dtype, **extra)
    mod, named = model.export_tvm(spec=model.get_default_spec())
    if getattr(model, "rope_in_kv_split", False):  # the pipeline's RopeInKVSplit reads it (kernels/rope_split.py)
        from edgesmith.compiler.kernels.rope_split import ATTR

        c = cfg
        mod = mod.with_attr(ATTR, json.dumps({
            "rot_heads": c.num_attention_heads + c.num_key_value_heads, "rotary_dim": c.rotary_dim,
            "theta": c.rope_theta, "attention_factor": c.rope_attention_factor}))
    params = [(name, tuple(int(x) for x in p.shape), p.dtype) for name, p in named]
    return mod, params


def lower(mod, target: tvm.target.Target, dump_dir: Path | None = None, *, sliding_window: int = 0,
          tuning: Tuning | None = None, launches: dict | None = None, cuda_graph: bool = False):
    # Not tvm.compile: it emits all TIR in one LLVM module, where a TVM 0.27 bug drops noalias
    # from every kernel (see tvm_api.build_vm). launches: filled for GPU targets (lowering/launches.py).
    return build_vm(mod, target, make_pipeline(target, dump_dir, sliding_window=sliding_window, tuning=tuning,
                                               launches=launches, cuda_graph=cuda_graph))


def compile_bundle(model: str | Path | Checkpoint, quant: str | None, target: str, out: Path, *,
                   quantize_embedding: bool | None = None, quantize_lm_head: bool | None = None,
                   dump_ir: Path | None = None,
                   progress: Progress | None = None, context: int | None = None,
                   kv_dtype: str | None = None, prefill_chunk: int = PREFILL_CHUNK,
                   tuning: TuningRecord | None = None, tuning_source: str = "", tokenizer: str | None = None,
                   gpu_fusion: bool = True, cuda_graph: bool = False) -> Path:
    """Compile `model` for `target` into the bundle folder `out`; returns `out`.

    quant None: the target's and the source's default (checkpoint.default_quant).
    quantize_embedding / quantize_lm_head: int4 (True) or float (False); None: the source's choice
    (source.quantized_ends: int4, except what an int4 ONNX export stores in float); an explicit
    quantize_embedding with quantize_lm_head None sets both (--float-embedding).
    context / kv_dtype: the KV cache (compiler/context.py; None: the defaults there).
    prefill_chunk: tokens per prefill call (a longer prompt is prefilled in chunks).
    tuning: a record from `edgesmith tune` (checked against the target by the caller:
    runtime/tune/apply.py); its kernel choices are applied and recorded in the manifest.
    tokenizer: --tokenizer (phi3, a tokenizer.json or .model, a folder) instead of the checkpoint's
    (compiler/inputs/tokenizer_files.py).
    gpu_fusion: False compiles a GPU target without decode's fusions (kernels/gpu.py), the
    reference the fused bundle is tested against; CPU targets ignore it.
    cuda_graph: a CUDA target replays its kernels between the KV cache's calls as CUDA graphs
    (--cuda-graph; lowering/pipeline.py); any other target refuses it."""
    progress = progress or Progress()
    q = get_quantization(quant) if quant else None
    preset = presets.get_preset(target)
    missing = presets.missing_codegen(preset)
    if missing:
        raise TargetError(missing)
    if cuda_graph and (preset.gpu is None or preset.gpu.api != "cuda"):
        raise TargetError(f"--cuda-graph is for CUDA targets; {preset.name} is not one (see `edgesmith targets`)")
    ckpt = model if isinstance(model, Checkpoint) else open_checkpoint(model)
    validate(ckpt)
    q = q or get_quantization(default_quant(ckpt, target)[0])
    source = ckpt.source_info(q)
    cfg = ckpt.config
    chosen = tokenizer_files.from_spec(tokenizer, cfg) if tokenizer else tokenizer_files.TokenizerChoice(
        ckpt.tokenizer_path, tuple(ckpt.tokenizer_files), ckpt.tokenizer_entry or TokenizerInfo())
    emb_q, head_q = quantized_ends(ckpt, q, quantize_embedding, quantize_lm_head)
    kept = _float_kept_note(ckpt, q, emb_q, head_q)
    if kept:
        source["float_ends"] = kept
    kv = kv_settings(cfg, preset, context, kv_dtype, quant=q)
    if isinstance(prefill_chunk, bool) or not isinstance(prefill_chunk, int) or prefill_chunk < 1:
        raise ConfigError(f"prefill chunk {prefill_chunk!r}: it must be a positive number of tokens")
    tvm_target = tvm.target.Target(preset.tvm_target())
    check_quant(q, preset, tvm_target)
    if preset.gpu is not None:
        _check_gpu_heads(cfg, preset, tvm_target, kv.dtype)
    if tuning is not None and tuning.target != preset.name:
        raise TuningError(f"tuning record {tuning_source or ''} was measured for target {tuning.target}, not "
                          f"{preset.name}; tune with --target {preset.name} or compile with --target {tuning.target}")
    kernel_tuning = tuning.tuning() if tuning is not None else None
    t0 = time.perf_counter()
    with bundle_io.staging(Path(out)) as tmp:
        progress.step(f"tracing {ckpt.description} at {q.name}; KV cache {kv.context} tokens, {kv.dtype}"
                      + (f", sliding window {kv.window}" if kv.window else ""))
        if tuning is not None:
            progress.step(f"tuning from {tuning_source or 'a record'}: {len(tuning.kernels)} kernel shapes measured on "
                          f"'{tuning.device}'" + (" (emulated: proves the mechanism only)" if tuning.emulated else ""))
        mod, params = build_model(cfg, q, tvm_target, quantize_embedding=emb_q, quantize_lm_head=head_q,
                                  kv_dtype=kv.dtype, tuning=kernel_tuning, gpu_fusion=gpu_fusion,
                                  sliding_window=kv.window)
        if "int4_kept" in source:
            progress.step(f"the source's int4 weights: {source['int4_kept']}")
        if kept:
            progress.step(f"the source's float {kept}")

        family = kernel_family(tvm_target)
        in_steps = tuple(name for name, shape, _ in params
                         if q.stored_in_steps(name, shape, family))
        progress.step(f"converting {len(params)} tensors")
        tick = progress.tensors(len(params))

        def stream():
            for item in convert_params(ckpt, params, q, family):
                yield item
                tick()

        (tmp / "params").mkdir()
        dump_tensor_cache(stream(), str(tmp / "params"))
        (tmp / "params" / "param_names.txt").write_text("".join(name + "\n" for name, _, _ in params))
        t_convert = time.perf_counter() - t0

        progress.step(f"lowering for {preset.name} ({tvm_target.kind.name}, {preset.triple})")
        launches: dict = {}  # GPU: the kernels a decoded token launches, read from the lowered module
        ex = lower(mod, tvm_target, dump_ir, sliding_window=kv.window, tuning=kernel_tuning, launches=launches,
                   cuda_graph=cuda_graph)
        if kernel_tuning is not None:
            used = kernel_tuning.used
            untuned = sorted(used - set(kernel_tuning.as_dict()))
            progress.step(f"tuning applied to {len(used) - len(untuned)} of the model's {len(used)} tunable kernels"
                          + (f"; the record has none for {', '.join(untuned)} (defaults kept: tune this model "
                             "to measure them)" if untuned else ""))
        (tmp / "lib").mkdir()
        progress.step("linking the model library")
        ex.export_library(str(tmp / "lib" / preset_library_name(preset)), **preset_export_kwargs(preset))
        kernels = kernel_sources.write_kernel_sources(ex, tmp / "kernels") if preset.gpu else None
        if kernels is not None and launches:
            kernels = dataclasses.replace(kernels, decode_launches=launches)
        if kernels is not None and cuda_graph:
            kernels = dataclasses.replace(kernels, cuda_graph=True)
        t_compile = time.perf_counter() - t0 - t_convert

        runtime_files = presets_runtime_files(preset)
        if runtime_files:
            progress.step(f"adding the runner and device runtime ({len(runtime_files)} files)")
            (tmp / "bin").mkdir()
            import shutil
            for rel, src in runtime_files.items():
                dst = tmp / "bin" / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)

        tokenizer = tokenizer_files.copy_into(chosen, tmp)
        if tokenizer.note:
            progress.step(f"no tokenizer in the bundle: {tokenizer.note}")

        progress.step("writing manifest")
        Manifest(
            model=ModelInfo.of(cfg, source=ckpt.description, spec=ckpt.spec, fingerprint=ckpt.fingerprint(),
                               input=source),
            quant=q.name,
            int8_dot=_int8_dot(q, tvm_target, preset) if q.int8_activations else None,
            int4_step_order=in_steps or None,
            quantize_embedding=emb_q,
            quantize_lm_head=head_q,
            target=TargetInfo(preset=preset.name, tvm_target=preset.tvm_target(), arch=preset.arch,
                              triple=preset.triple, layout=preset.layout.name),
            arch=preset.arch,
            tvm_version=TVM_VERSION,
            kv_cache=kv.manifest(PAGE_SIZE, prefill_chunk, cfg),
            device=gpu_device_entry(preset) if preset.gpu else None,
            kernels=kernels,
            # a GPU bundle says only what a record applied (its GEMVs' choices: lowering/schedules_fused.py)
            tuning=None if preset.gpu and tuning is None else manifest_entry(tuning, kernel_tuning or DEFAULT,
                                                                             tuning_source, model_shape_id(cfg, q.name)),
            tokenizer=tokenizer,
            params=tuple(name for name, _, _ in params),
            weight_bytes=sum(_nbytes(s, d) for _, s, d in params),
            build=BuildInfo(host=platform.node(), convert_s=round(t_convert, 2), compile_s=round(t_compile, 2),
                            edgesmith_version=__version__),
        ).write(tmp)
    return Path(out)


def _check_gpu_heads(cfg, preset, tvm_target, kv_dtype: str) -> None:
    """One line, before anything is traced, when TVM's GPU attention kernels cannot take the heads."""
    from edgesmith.compiler.kernels.attention_gpu import head_size_limit

    why = head_size_limit(cfg, tvm_target, kv_dtype)
    if why is None:
        return
    other = "float16" if kv_dtype == "float32" else "float32"
    hint = (f"--kv-dtype {other} takes it on this target" if head_size_limit(cfg, tvm_target, other) is None
            else "compile it for a CPU target (host, arm64-linux, ...): edgesmith's CPU attention kernels take it")
    raise TargetError(f"target {preset.name}: {why}; {hint}")


def _float_kept_note(ckpt: Checkpoint, q: Quantization, emb_q: bool, head_q: bool) -> str:
    """What happens to the embedding / lm_head the source stores in float beside its int4 weights."""
    stored = [n for n, kept in (("embedding", ckpt.keeps_float_embedding), ("lm_head", ckpt.keeps_float_lm_head))
              if kept and not (n == "lm_head" and ckpt.config.tie_word_embeddings)]
    if not stored or not q.quantized:
        return ""
    quantized = {"embedding": emb_q, "lm_head": head_q}
    kept = [n for n in stored if not quantized[n]]
    parts = []
    if kept:
        ours, theirs = q.unquantized().storage_dtype, getattr(ckpt.config, "dtype", None)
        how = (f"as the source stores {'it' if len(kept) == 1 else 'them'}" if ours == theirs or theirs is None
               else f"the source's {theirs} rounded")
        parts.append(f"{' and '.join(kept)} kept in {ours}, {how} (--quantize-embedding: int4)")
    requantized = [n for n in stored if quantized[n]]
    if requantized:
        parts.append(f"{' and '.join(requantized)} quantized to int4 by edgesmith (the source keeps "
                     f"{'it' if len(requantized) == 1 else 'them'} in float: logits differ from the source's)")
    return "; ".join(parts)


def _int8_dot(q: Quantization, target, preset) -> str | None:
    """The int8 dot-product feature decode runs on (None: float activations on this target)."""
    from edgesmith.compiler.kernels import int8 as kernels_int8

    isas = [] if preset.gpu else kernels_int8.dot_isas(target)
    return isas[0].name if isas else None


def _nbytes(shape, dtype) -> int:
    n = 1
    for x in shape:
        n *= x
    return n * tvm.DataType(dtype).bits // 8


def preset_export_kwargs(preset) -> dict:
    from edgesmith.targets import toolchains
    return toolchains.export_library_kwargs(preset)


def presets_runtime_files(preset) -> dict[str, Path]:
    from edgesmith.targets import runner_build
    return runner_build.bundle_runtime_files(preset)


def preset_library_name(preset) -> str:
    from edgesmith.targets import toolchains
    return toolchains.library_name(preset)


# DLPack device types, and the runtime library each GPU API needs on top of libtvm_runtime
_DL_DEVICE = {"cuda": 2, "opencl": 4, "vulkan": 7, "metal": 8, "webgpu": 15}
_DEVICE_LIBS = {"cuda": ["libtvm_runtime_cuda.so"], "metal": ["libtvm_runtime_metal.dylib"],
                "opencl": ["libedgesmith_opencl.so"], "webgpu": ["libedgesmith_webgpu.so"]}


def gpu_device_entry(preset) -> DeviceInfo:
    """The manifest's "device": what the runner runs on, and whether the bundle can run there."""
    gpu = preset.gpu
    return DeviceInfo(api=gpu.api, dl_device_type=_DL_DEVICE[gpu.api], runtime_libs=tuple(_DEVICE_LIBS.get(gpu.api, [])),
                      limits=gpu.limits(), runtime_missing=gpu.runtime_note or None,
                      build_on_device="bin/build-on-device.sh" if preset.toolchain == "on-device" else None)
