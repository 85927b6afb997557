"""`edgesmith inspect`: what a bundle holds, readable or as JSON."""
from __future__ import annotations

import json
from pathlib import Path

from edgesmith.compiler import bundle as bundle_io


def describe(bundle: Path, as_json: bool = False) -> str:
    m = bundle_io.read_manifest(bundle)
    bundle_io.verify(bundle, m)
    if as_json:
        return json.dumps(m, indent=1)
    cfg = m["model"]["config"]
    files = m["files"]
    size = sum(f["size"] for f in files.values())
    lines = [
        f"bundle      {Path(bundle)}  (all {len(files)} files match their sha256)",
        f"model       {m['model']['source']}",
        f"            {cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, heads {cfg['num_attention_heads']}"
        f"/{cfg['num_key_value_heads']} kv, vocab {cfg['vocab_size']}, rope {cfg['rope_type']}"
        f"{'' if cfg['partial_rotary_factor'] == 1 else ' partial ' + str(cfg['partial_rotary_factor'])}"
        f"{', tied embeddings' if cfg['tie_word_embeddings'] else ''}",
        f"quant       {m['quant']}{' (embedding and lm_head in float)' if m['quant'].startswith('q4') and not m.get('quantize_embedding') else ''}",
        f"target      {m['target']['preset']} ({m['target']['triple']}, layout {m['target']['layout']}) "
        f"{json.dumps(m['target']['tvm_target'], separators=(',', ':'))}",
        f"tvm         {m['tvm_version']}",
        f"weights     {m['weight_bytes'] / 2**20:.1f} MiB in {sum(1 for f in files if f.startswith('params/params_shard'))} shards",
        f"context     {m['kv_cache']['max_total_seq_len']} tokens (page {m['kv_cache']['page_size']}, "
        f"prefill chunk {m['kv_cache']['prefill_chunk_size']})",
        f"size        {size / 2**20:.1f} MiB on disk",
        f"built       convert {m['build']['convert_s']} s, compile {m['build']['compile_s']} s",
    ]
    if "eval" in m:
        e = m["eval"]
        lines.append(f"accuracy    vs q0f32 over {e['positions']} positions: top-1 agreement "
                     f"{100 * e['top1_agreement']:.1f}%, mean KL {e['mean_kl']:.5f}, max |diff| {e['max_abs_diff']:.4f}")
    lines.append("files")
    for rel, f in files.items():
        lines.append(f"  {rel:40s} {f['size']:>12,d}  {f['sha256'][:12]}")
    return "\n".join(lines)
