"""A tiny test-only model that follows the bundle convention of the real compiler.

The runner tests use it to check the runner apart from the compiler (a compiler bug cannot hide
behind the same compiler's reference): it is built directly with `tvm.relax.frontend.nn` — an embedding, one attention layer on TVM's TIR paged KV cache
(fused qkv), a SiLU MLP and an fp32 lm_head — exporting exactly the three functions the
runner calls (`create_paged_kv_cache`, `prefill` (with the prompt's total length), `decode`) with
packed params.

It also gives the reference the runner is checked against: the same module compiled for
the host and driven through `tvm.relax.VirtualMachine` in Python.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
from pathlib import Path

import numpy as np
import tvm
from tvm.contrib import tvmjs

from edgesmith.targets.tvm_api import kv_cache_mod, nn, relax, te, tirx

PagedKVCache, RopeMode, TIRPagedKVCache = kv_cache_mod.PagedKVCache, kv_cache_mod.RopeMode, kv_cache_mod.TIRPagedKVCache

VOCAB = 96
HIDDEN = 32
HEADS = 2
HEAD_DIM = 16
PAGE_SIZE = 16  # the CPU KV-cache kernels need 16
PREFILL_CHUNK = 32
MAX_TOTAL_SEQ_LEN = 256


class TinyLM(nn.Module):
    def __init__(self, target: tvm.target.Target):
        self.target = target
        self.embed = nn.Embedding(VOCAB, HIDDEN, dtype="float32")
        self.qkv = nn.Linear(HIDDEN, 3 * HEADS * HEAD_DIM, bias=False, dtype="float32")
        self.o_proj = nn.Linear(HEADS * HEAD_DIM, HIDDEN, bias=False, dtype="float32")
        self.up = nn.Linear(HIDDEN, 2 * HIDDEN, bias=False, dtype="float32")
        self.down = nn.Linear(2 * HIDDEN, HIDDEN, bias=False, dtype="float32")
        self.lm_head = nn.Linear(HIDDEN, VOCAB, bias=False, dtype="float32")

    def _forward(self, input_ids: nn.Tensor, kv: PagedKVCache) -> nn.Tensor:
        b, s = input_ids.shape
        h = self.embed(input_ids)  # (1, s, HIDDEN)
        qkv = self.qkv(h).reshape(b, s, 3 * HEADS, HEAD_DIM)
        attn = kv.attention_with_fused_qkv(0, qkv, HEADS, sm_scale=HEAD_DIM**-0.5)
        h = h + self.o_proj(attn.reshape(b, s, HEADS * HEAD_DIM))
        h = h + self.down(nn.op.silu(self.up(h)))
        last = nn.op.tensor_expr_op(  # (1, 1, HIDDEN): only the last token's logits are needed
            lambda x: te.compute(
                (x.shape[0], 1, x.shape[2]), lambda i, _, k: x[i, x.shape[1] - 1, k]
            ),
            "take_last",
            [h],
        )
        return self.lm_head(last)  # (1, 1, VOCAB)

    def prefill(self, input_ids: nn.Tensor, paged_kv_cache: PagedKVCache, total_len: tirx.Var, seq_pos: tirx.Var):
        # total_len (the whole prompt's length) only matters to longrope, seq_pos (the first token's
        # position) to a model that applies RoPE itself; taken like the real model's (this one's
        # cache applies RoPE)
        return self._forward(input_ids, paged_kv_cache), paged_kv_cache

    def decode(self, input_ids: nn.Tensor, paged_kv_cache: PagedKVCache, seq_pos: tirx.Var):
        return self._forward(input_ids, paged_kv_cache), paged_kv_cache

    def create_paged_kv_cache(
        self,
        max_batch_size: tirx.Var,
        max_total_seq_len: tirx.Var,
        prefill_chunk_size: tirx.Var,
        page_size: tirx.Var,
        support_sliding_window: tirx.Var,
    ) -> PagedKVCache:
        return TIRPagedKVCache(
            attn_kind="mha",
            max_batch_size=max_batch_size,
            max_total_seq_len=max_total_seq_len,
            prefill_chunk_size=prefill_chunk_size,
            page_size=page_size,
            support_sliding_window=support_sliding_window,
            layer_partition=relax.ShapeExpr([0, 1]),
            num_hidden_layers=1,
            num_attention_heads=HEADS,
            num_key_value_heads=HEADS,
            qk_head_dim=HEAD_DIM,
            v_head_dim=HEAD_DIM,
            mla_original_qk_head_dim=0,
            mla_original_v_head_dim=0,
            rope_mode=RopeMode.NORMAL,
            rope_scale=1,
            rope_theta=10000,
            rope_scaling={},
            rope_ext_factors=relax.prim_value(0),
            rotary_dim=HEAD_DIM,
            enable_disaggregation=False,
            dtype="float32",
            target=self.target,
        )


def _spec():
    packed = {"param_mode": "packed", "effect_mode": "none"}
    kv = nn.spec.Object(object_type=PagedKVCache)
    return {
        "prefill": {
            "input_ids": nn.spec.Tensor([1, "seq_len"], "int32"),
            "paged_kv_cache": kv,
            "total_len": int,
            "seq_pos": int,
            "$": packed,
        },
        "decode": {"input_ids": nn.spec.Tensor([1, 1], "int32"), "paged_kv_cache": kv, "seq_pos": int, "$": packed},
        "create_paged_kv_cache": {
            "max_batch_size": int,
            "max_total_seq_len": int,
            "prefill_chunk_size": int,
            "page_size": int,
            "support_sliding_window": int,
            "$": {"param_mode": "none", "effect_mode": "none"},
        },
    }


def random_params(seed: int = 0) -> dict[str, np.ndarray]:
    """Weights scaled so the logits have clear winners (no argmax near-ties across CPUs)."""
    rng = np.random.default_rng(seed)
    named = TinyLM(tvm.target.Target({"kind": "llvm"})).export_tvm(spec=_spec(), allow_extern=True)[1]
    return {
        name: (rng.standard_normal([int(d) for d in p.shape]) * 0.5).astype("float32")
        for name, p in named
    }


def compile_tiny(target: dict, out_so: Path, fcompile=None) -> list[str]:
    """Compile the model for `target` into `out_so`; returns the parameter names in call order."""
    tgt = tvm.target.Target(target)
    mod, named = TinyLM(tgt).export_tvm(spec=_spec(), allow_extern=True)[:2]
    ex = tvm.compile(mod, target=tgt)
    out_so.parent.mkdir(parents=True, exist_ok=True)
    ex.export_library(str(out_so), fcompile=fcompile)
    return [name for name, _ in named]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_bundle(
    out: Path,
    *,
    target: dict,
    arch: str,
    fcompile=None,
    runtime_files: dict[str, Path] | None = None,
    seed: int = 0,
    preset: str | None = None,
    layout: str = "linux",
) -> Path:
    """Write BUNDLE/{manifest.json, lib/model.so, params/*, bin/*} like the compiler does."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    names = compile_tiny(target, out / "lib" / "model.so", fcompile)
    params = random_params(seed)
    tvmjs.dump_tensor_cache(
        {n: params[n] for n in names}, str(out / "params"), encode_format="raw", show_progress=False
    )
    (out / "params" / "param_names.txt").write_text("".join(n + "\n" for n in names))
    for rel, src in (runtime_files or {}).items():
        dst = out / "bin" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    files = {}
    for p in sorted((out / "lib").rglob("*")) + sorted((out / "params").rglob("*")):
        if p.is_file():
            files[p.relative_to(out).as_posix()] = {"sha256": _sha256(p), "size": p.stat().st_size}
    manifest = {
        "format": 1,
        "tvm_version": tvm.__version__,
        "arch": arch,
        # as the compiler writes it: the preset (how the bundle is started: runtime/session.py)
        "target": {"preset": preset or ("host" if arch == platform.machine() else "arm64-linux"),
                   "tvm_target": target, "layout": layout, "arch": arch},
        "quant": "q0f32",
        "model": {"source": "tests/tiny_vm_model.py", "config": {"vocab_size": VOCAB, "hidden_size": HIDDEN, "num_hidden_layers": 1}},
        "kv_cache": {
            "page_size": PAGE_SIZE,
            "prefill_chunk_size": PREFILL_CHUNK,
            "max_total_seq_len": MAX_TOTAL_SEQ_LEN,
        },
        "files": files,
        "params": names,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def reference_greedy(bundle: Path, prompt: list[int], n: int) -> list[int]:
    """Greedy tokens from the same weights, compiled for the host and run by the Python VM."""
    import tempfile

    manifest = json.loads((Path(bundle) / "manifest.json").read_text())
    host_target = {"kind": "llvm"}
    with tempfile.TemporaryDirectory() as tmp:
        so = Path(tmp) / "ref.so"
        names = compile_tiny(host_target, so)
        assert names == manifest["params"]
        dev = tvm.cpu()
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(so)), dev)
        load = tvm.get_global_func("vm.builtin.tensor_cache.load")
        by_name = tvm.get_global_func("vm.builtin.param_array_from_cache_by_name")
        load(str(Path(bundle) / "params"), 1, 0)
        params = by_name(names)
        tvm.get_global_func("vm.builtin.tensor_cache.clear")()
        kvc = manifest["kv_cache"]
        shape = tvm.runtime.ShapeTuple  # nn.spec `int` arguments arrive as 1-element shapes
        kv = vm["create_paged_kv_cache"](
            shape([1]),
            shape([kvc["max_total_seq_len"]]),
            shape([kvc["prefill_chunk_size"]]),
            shape([kvc["page_size"]]),
            shape([0]),
        )
        begin = tvm.get_global_func("vm.builtin.kv_state_begin_forward")
        end = tvm.get_global_func("vm.builtin.kv_state_end_forward")
        tvm.get_global_func("vm.builtin.kv_state_add_sequence")(kv, 0)

        fed = [0]  # tokens in the sequence: the next forward's first position

        def step(fn: str, ids: list[int]) -> np.ndarray:
            begin(kv, tvm.runtime.ShapeTuple([0]), tvm.runtime.ShapeTuple([len(ids)]))
            x = tvm.runtime.tensor(np.array([ids], dtype="int32"), dev)
            extra = [shape([len(prompt)])] if fn == "prefill" else []
            logits, _ = vm[fn](x, kv, *extra, shape([fed[0]]), params)
            end(kv)
            fed[0] += len(ids)
            return logits.numpy()[0, 0]

        chunk = kvc["prefill_chunk_size"]
        for i in range(0, len(prompt), chunk):
            logits = step("prefill", prompt[i : i + chunk])
        out = []
        for _ in range(n):
            tok = int(np.argmax(logits))  # lowest index on ties, like the runner
            out.append(tok)
            if len(out) == n:
                break
            logits = step("decode", [tok])
        return out
