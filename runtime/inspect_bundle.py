"""`edgesmith inspect`: what a bundle holds, readable or as JSON."""
from __future__ import annotations

import json
from pathlib import Path

from edgesmith.compiler.bundle import folder as bundle_io
from edgesmith.compiler.models import for_config, tokenizer_builder
from edgesmith.compiler.quantization.registry import QUANTIZATIONS


def describe(bundle: Path, as_json: bool = False) -> str:
    m = bundle_io.read_manifest(bundle)
    bundle_io.verify(bundle, m)
    if as_json:
        return json.dumps(m.as_dict(), indent=1)
    cfg = m.config
    files = m.files
    size = sum(f.size for f in files.values())
    quant = QUANTIZATIONS.get(m.quant)
    lines = [
        f"bundle      {Path(bundle)}  (all {len(files)} files match their sha256)",
        f"model       {m.model.source}",
        f"            {for_config(cfg).describe(cfg)}",
        *_input_lines(m.model.input),
        f"quant       {m.quant}{_float_ends(m, quant)}",
        f"target      {m.target.preset} ({m.target.triple}, layout {m.target.layout}) "
        f"{json.dumps(m.target.tvm_target, separators=(',', ':'))}",
        *_device_lines(m),
        f"tvm         {m.tvm_version}",
        f"weights     {m.weight_bytes / 2**20:.1f} MiB in {sum(1 for f in files if f.startswith('params/params_shard'))} shards",
        f"tokenizer   {tokenizer_line(m)}",
        *_context_lines(m),
        *_tuning_lines(m.tuning),
        f"size        {size / 2**20:.1f} MiB on disk",
        f"built       convert {m.build.convert_s} s, compile {m.build.compile_s} s",
    ]
    if m.eval is not None:
        e = m.eval
        lines.append(f"accuracy    vs q0f32 over {e.positions} positions: top-1 agreement "
                     f"{100 * e.top1_agreement:.1f}%, mean KL {e.mean_kl:.5f}, max |diff| {e.max_abs_diff:.4f}")
    lines.append("files")
    for rel, f in files.items():
        lines.append(f"  {rel:40s} {f.size:>12,d}  {f.sha256[:12]}")
    return "\n".join(lines)


def _float_ends(m, quant) -> str:
    """' (embedding and lm_head in float)' and the like for an int4 bundle; '' when both are int4."""
    if not (quant and quant.quantized):
        return ""
    emb = bool(m.quantize_embedding)
    head = emb if m.quantize_lm_head is None else bool(m.quantize_lm_head)
    if emb and head:
        return ""
    if not emb and not head:
        return " (embedding and lm_head in float)"
    return " (embedding in float, lm_head int4)" if head else " (lm_head in float, embedding int4)"


def _tuning_lines(t) -> list[str]:
    """The kernel choices the compile applied (compiler/tuning.py): defaults, or a record's."""
    if t is None:
        return []
    if t.defaults:
        return ["tuning      none: the kernels' default choices"]
    lines = [f"tuning      {t.source}: measured on '{t.device}' ({(t.fingerprint or {}).get('cpu_model', '?')}, "
             f"id {t.fingerprint_id}){', EMULATED (mechanism only)' if t.emulated else ''}"
             f"{', incomplete' if not t.complete else ''}"]
    for key, params in sorted(t.kernels.items()):
        lines.append(f"            {key:42s} {', '.join(f'{k}={v}' for k, v in params.items())}")
    if t.untuned:
        lines.append(f"            {len(t.untuned)} more kernels keep the defaults (not in the record): "
                     + ", ".join(t.untuned))
    if t.threads:
        lines.append(f"            {'threads (run time; --threads overrides)':42s} {t.threads}")
    return lines


def tokenizer_line(m) -> str:
    """Which tokenizer the bundle carries: the checkpoint's, one its architecture built, or none and why."""
    t = m.tokenizer
    if t is None:  # bundles from before the manifest said
        return "tokenizer.json (checkpoint's)" if "tokenizer.json" in m.files else "none"
    template = ", with its chat template" if t.chat_template else ", no chat template"
    if t.source == "checkpoint":
        return "the checkpoint's tokenizer.json" + template
    builder = tokenizer_builder(t.vocabulary) if t.vocabulary else None
    if t.source and builder is not None:
        return builder.describe(t) + template
    if t.source:
        return f"{t.source} (from {t.origin}){template}"
    return f"none: {t.note or 'no tokenizer.json'}"


def _input_lines(source) -> list[str]:
    """The checkpoint's format (safetensors, onnx, random) and, for int4 ONNX, what stayed exact."""
    if not source:
        return []
    fmt = {"onnx": "ONNX Runtime GenAI (" + source.get("file", "model.onnx") + ")",
           "safetensors": "Hugging Face safetensors", "random": "random weights"}.get(source["format"], source["format"])
    line = f"format      {fmt}"
    if source.get("int4_linears"):
        line += (f"; {source['int4_linears']} int4 MatMulNBits (block {'/'.join(map(str, source['int4_blocks']))},"
                 f" {source['int4_scales']} scales): {source['int4_kept']}")
    if source.get("float_linears"):
        line += f"; {source['float_linears']} float MatMul: {source.get('float_kept', '')}"
    if source.get("float_ends"):
        line += f"; {source['float_ends']}"
    return [line]


def _context_lines(m) -> list[str]:
    """The KV cache: context, dtype, bytes per token (and at the full context), sliding window."""
    from edgesmith.compiler.context import cache_tokens, window_keep
    from edgesmith.runtime.profile.fit import kv_bytes_per_token

    kv = m.kv_cache
    per_token = kv.bytes_per_token or kv_bytes_per_token(m)
    window = (f"; sliding window {kv.sliding_window} tokens" if kv.sliding_window else "")
    # a sliding cache holds the window's pages (its keys and one prefill chunk), not the context's
    tokens = cache_tokens(kv, kv.max_total_seq_len)
    slides = (f" (the cache slides: {tokens} tokens of pages, not {kv.max_total_seq_len})"
              if window_keep(kv, kv.max_total_seq_len) else "")
    return [f"context     {kv.max_total_seq_len} tokens (page {kv.page_size}, prefill chunk "
            f"{kv.prefill_chunk_size}){window}",
            f"kv cache    {kv.dtype}, {per_token / 1024:.1f} KiB per token, "
            f"{per_token * tokens / 2**20:.1f} MiB at the full context{slides}"]


def _device_lines(m) -> list[str]:
    """GPU bundles: the device API and limits, its kernels, and whether it can run as shipped."""
    dev = m.device
    if not dev:
        return []
    limits = ", ".join(f"{k} {v}" for k, v in dev.limits.items())
    lines = [f"device      {dev.api} ({limits})"]
    if m.kernels:
        lines.append(f"kernels     {len(m.kernels.names)} {m.kernels.language} kernels in kernels/ "
                     "(edgesmith inspect BUNDLE --kernels)")
        lines += _launch_lines(m.kernels.decode_launches)
    if dev.runtime_missing:
        lines.append(f"runtime     not included: {dev.runtime_missing}")
    if dev.build_on_device:
        lines.append(f"runtime     link and build on the device: sh {dev.build_on_device}")
    return lines


def _launch_lines(launches) -> list[str]:
    """The kernels a decoded token launches, as the compiler derived them from the lowered decode;
    `edgesmith profile` counts the real launches on the device (tg.kernels_per_token)."""
    if not launches:
        return []
    layers = launches["per_layer"]
    per = f"{layers[0]} per layer" if len(set(layers)) == 1 else "per layer " + ", ".join(map(str, layers))
    return [f"decode      {launches['total']} kernels per token: {per} x {len(layers)} layers + the head's "
            f"{launches['head']} (derived from the compiled decode, {launches['kv_cache_per_layer']} per layer "
            "inside the KV cache's attention; `edgesmith profile` counts them on the device)"] + \
        ([f"cuda graphs {launches['graphs']} a token: the kernels between the KV cache's calls replayed as CUDA "
          "graphs (--cuda-graph)"] if launches.get("graphs") else [])


def _kernel_entry(bundle: Path):
    from edgesmith.errors import BundleError

    m = bundle_io.read_manifest(bundle)
    entry = m.kernels
    if not entry:
        raise BundleError(f"bundle {bundle} ({m.target.preset}) holds no GPU kernel sources: "
                          "only GPU targets (opencl, webgpu, metal, cuda) have them")
    return entry


def list_kernels(bundle: Path) -> str:
    """`inspect --kernels`: the GPU kernels the bundle's library carries, with their sizes."""
    entry = _kernel_entry(bundle)
    ext = entry.extension
    lines = [f"{len(entry.names)} {entry.language} kernels (full module: {entry.module})"]
    for name in entry.names:
        text = (Path(bundle) / "kernels" / f"{name}.{ext}").read_text()
        lines.append(f"  {name:56s} {text.count(chr(10)):>6d} lines")
    return "\n".join(lines)


def kernel_source(bundle: Path, name: str) -> str:
    """`inspect --kernel NAME`: one kernel's source (NAME with or without the `_kernel` suffix)."""
    from edgesmith.errors import BundleError

    entry = _kernel_entry(bundle)
    for candidate in (name, name + "_kernel"):
        if candidate in entry.names:
            return (Path(bundle) / "kernels" / f"{candidate}.{entry.extension}").read_text()
    close = [n for n in entry.names if name in n][:5]
    hint = f"; did you mean {', '.join(close)}" if close else "; list them with --kernels"
    raise BundleError(f"bundle {bundle} has no kernel '{name}'{hint}")
