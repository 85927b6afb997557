"""Phi-3 (Phi3ForCausalLM) in tvm.relax.frontend.nn, on TVM's paged KV cache.

Parameter names follow transformers' (`model.layers.3.self_attn.qkv_proj.weight`); an int4
linear holds `q_weight` + `q_scale` in place of `weight` (compiler/kernels/linear.py: the layers are
stored and computed as the quantization entry says, with the target's kernel family). Activations are float32 whatever the
weights' storage (CPU targets); the KV cache applies no RoPE (rope_mode NONE): RoPE is ours
(kernels.rope), so longrope and partial rotary match transformers exactly.

Entry points (batch 1, one sequence):
  prefill(input_ids (1, n) int32, kv, total_len, seq_pos, params) -> (logits (1, 1, vocab) f32 of the last token, kv)
      total_len (a 1-element shape): the sequence's length once the whole prompt this chunk
      belongs to is in; it picks longrope's factors as a one-forward prefill would (kernels.rope)
  decode(input_ids (1, 1) int32, kv, seq_pos, params)  -> (logits (1, 1, vocab) f32, kv)
      seq_pos (a 1-element shape): the absolute position of the forward's first token (the
      tokens already in the sequence); RoPE's positions count from it. A sliding KV cache
      reports window-relative positions (compiler/context.py), so they are not taken from it.
  create_paged_kv_cache(max_batch, max_total_seq_len, prefill_chunk, page_size, sliding) -> kv
      sliding 1: the cache may slide (the runner sets the sequence's window: compiler/context.py)

The KV cache holds `kv_dtype` (float32 or float16): q, k and v leave RoPE in it (TVM's cache
wants all three in its dtype) and attention's output returns to float32. The sliding window's
per-query mask is the attention kernels' (kernels/attention_cpu.py, attention_gpu.py, swapped in
by the lowering pipeline, which is passed the window).
"""
from __future__ import annotations

from edgesmith.compiler.context import KV_DTYPES
from edgesmith.compiler.kernels import cpu as kernels
from edgesmith.compiler.kernels.family import kernel_family
from edgesmith.compiler.kernels.linear import Linears
from edgesmith.compiler.quantization.scheme import Quantization
from edgesmith.targets.tvm_api import kv_cache_mod, nn, relax

from .config import Phi3Config

op = nn.op


class RMSNorm(nn.Module):
    def __init__(self, hidden: int, eps: float):
        self.weight = nn.Parameter((hidden,), "float32")
        self.eps = eps

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        return op.rms_norm(x, self.weight, axes=[-1], epsilon=self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: Phi3Config, linear: Linears):
        self.cfg = cfg
        self.rope_in_kv_split = False  # True: the KV cache's split kernel applies RoPE (kernels/rope_split.py)
        d, hq, hkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        self.qkv_proj = linear(cfg.hidden_size, (hq + 2 * hkv) * d)
        self.o_proj = linear(hq * d, cfg.hidden_size)

    def forward(self, x, kv, layer_id: int, positions, rope_factors, factor_len, kv_dtype: str, last_only=False,
                norm=None):
        """last_only: the output of the last position only (b, 1, hidden): the keys and values of
        every position still go into the cache, o_proj runs for the one row the caller reads.
        norm: the layer's input RMSNorm, applied to x by (or fused into) qkv_proj."""
        cfg = self.cfg
        d, hq, hkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        b, t, _ = x.shape
        if self.rope_in_kv_split:  # the cache's split rotates q and k; it takes qkv in the cache's dtype
            qkv = self.qkv_proj(x, norm=norm, out_dtype=kv_dtype)
            return self._attend(op.reshape(qkv, (b, t, hq + 2 * hkv, d)), kv, layer_id, kv_dtype, last_only, b, t)
        qkv = op.reshape(self.qkv_proj(x, norm=norm), (b, t, hq + 2 * hkv, d))
        # longrope only: its factors, and (prefill) the length that picks them
        extra = [] if rope_factors is None else [rope_factors] + ([] if factor_len is None else [factor_len])
        qkv = op.tensor_expr_op(
            lambda q, p, *f: kernels.rope(
                q, p, f[0] if f else None, n_rot_heads=hq + hkv, rotary_dim=cfg.rotary_dim,
                theta=cfg.rope_theta, attention_factor=cfg.rope_attention_factor,
                original_max_pos=cfg.original_max_position_embeddings,
                factor_len=f[1] if len(f) > 1 else None, out_dtype=kv_dtype),
            "rope", [qkv, positions] + extra)
        return self._attend(qkv, kv, layer_id, kv_dtype, last_only, b, t)

    def _attend(self, qkv, kv, layer_id, kv_dtype, last_only, b, t):
        cfg = self.cfg
        d, hq = cfg.head_dim, cfg.num_attention_heads
        out = kv.attention_with_fused_qkv(layer_id, qkv, hq, sm_scale=d**-0.5)  # (b, t, hq, d) kv_dtype
        family = self.o_proj.family
        # GPU decode (t == 1): o_proj widens a float16 output as it loads it (kernels/gpu.py); prefill
        # and the CPU cast it in a kernel of their own
        if kv_dtype != "float32" and not (family.gpu and family.fuse and isinstance(t, int) and t == 1):
            out = op.astype(out, "float32")
        out = op.reshape(out, (b, t, hq * d))
        if last_only:
            out = op.tensor_expr_op(kernels.last_token, "last_token", [out])  # (b, 1, hq * d)
        return self.o_proj(out)


class MLP(nn.Module):
    def __init__(self, cfg: Phi3Config, linear: Linears):
        self.inter = cfg.intermediate_size
        self.gate_up_proj = linear(cfg.hidden_size, 2 * cfg.intermediate_size)
        self.down_proj = linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x, norm):
        """down(SiLU(gate) * up) of gate_up(norm(x)); the linears fuse the norm and the activation
        into their kernels where the target's family does (GPU decode: kernels/linear.py)."""
        return self.down_proj(self.gate_up_proj(x, norm=norm), silu_mul=True)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Phi3Config, linear: Linears):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, linear)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg, linear)

    def forward(self, h, kv, layer_id, positions, rope_factors, factor_len, kv_dtype, last_only=False):
        """last_only (the last layer of a prefill): attention over every position (their keys and
        values are cached), then o_proj, the residual and the MLP for the last position only, the
        one whose logits the prefill returns (llama.cpp's graph does the same): at Phi-3-mini's 32
        layers 3% of a prompt's matmul work, a third at the 2 layers of bench/arm_cost.py."""
        a = self.self_attn(h, kv, layer_id, positions, rope_factors, factor_len, kv_dtype, last_only,
                           norm=self.input_layernorm)
        if last_only:
            h = op.tensor_expr_op(kernels.last_token, "last_token", [h])
        h = h + a
        return h + self.mlp(h, self.post_attention_layernorm)


class Body(nn.Module):
    def __init__(self, cfg: Phi3Config, linear: Linears, quantize_embedding: bool):
        self.embed_tokens = linear(cfg.hidden_size, cfg.vocab_size, quantize=quantize_embedding)
        self.layers = nn.ModuleList([DecoderLayer(cfg, linear) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if cfg.rope_type == "longrope":
            # (short, long) divisors of the inverse frequencies; not in HF's files: loader.py makes them from the config.
            self.rope_ext_factors = nn.Parameter((2, cfg.rotary_dim // 2), "float32")
        else:
            self.rope_ext_factors = None


class Phi3ForCausalLM(nn.Module):
    def __init__(self, cfg: Phi3Config, quant: Quantization, *, quantize_embedding: bool = True,
                 quantize_lm_head: bool | None = None, target=None, kv_dtype: str = "float32", tuning=None,
                 gpu_fusion: bool = True, sliding_window: int = 0):
        if kv_dtype not in KV_DTYPES:
            raise ValueError(f"KV cache dtype {kv_dtype!r}: one of {', '.join(KV_DTYPES)}")
        self.cfg = cfg
        self.target = target
        self.kv_dtype = kv_dtype
        # every layer: the entry's kernels for this target, with the tuning's choices (None: defaults)
        linear = Linears(quant, kernel_family(target, tuning, gpu_fusion=gpu_fusion))
        self.model = Body(cfg, linear, quantize_embedding)
        # GPU decode: RoPE in the KV cache's split kernel instead of a kernel of its own
        # (kernels/rope_split.py says when the split's positions allow it)
        self.rope_in_kv_split = bool(linear.family.gpu and linear.family.fuse
                                     and not sliding_window and cfg.rope_type != "longrope")
        for layer in self.model.layers:
            layer.self_attn.rope_in_kv_split = self.rope_in_kv_split
        if not cfg.tie_word_embeddings:
            # None: as the embedding (an int4 ONNX export may store one in float, the other in int4)
            head_q = quantize_embedding if quantize_lm_head is None else quantize_lm_head
            self.lm_head = linear(cfg.hidden_size, cfg.vocab_size, quantize=head_q)

    def _forward(self, input_ids, kv, seq_pos, factor_len=None):
        b, t = input_ids.shape
        h = self.model.embed_tokens.lookup(input_ids)
        positions = op.tensor_expr_op(kernels.positions, "positions", [input_ids, seq_pos])
        last = len(self.model.layers) - 1
        for i, layer in enumerate(self.model.layers):
            # a prefill's last layer runs past attention for the last position only: (1, 1, hidden)
            h = layer(h, kv, i, positions, self.model.rope_ext_factors, factor_len, self.kv_dtype,
                      last_only=bool(t != 1) and i == last)
        head = self.model.embed_tokens if self.cfg.tie_word_embeddings else self.lm_head
        return head(h, norm=self.model.norm), kv  # the final norm: fused into lm_head on GPU decode

    def prefill(self, input_ids: nn.Tensor, paged_kv_cache, total_len, seq_pos):
        return self._forward(input_ids, paged_kv_cache, seq_pos, total_len)

    def decode(self, input_ids: nn.Tensor, paged_kv_cache, seq_pos):
        return self._forward(input_ids, paged_kv_cache, seq_pos)

    def create_paged_kv_cache(self, max_batch_size, max_total_seq_len, prefill_chunk_size, page_size,
                              support_sliding_window):
        cfg = self.cfg
        return kv_cache_mod.TIRPagedKVCache(
            attn_kind="mha",
            max_batch_size=max_batch_size,
            max_total_seq_len=max_total_seq_len,
            prefill_chunk_size=prefill_chunk_size,
            page_size=page_size,
            support_sliding_window=support_sliding_window,
            layer_partition=relax.ShapeExpr([0, cfg.num_hidden_layers]),
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_key_value_heads,
            qk_head_dim=cfg.head_dim,
            v_head_dim=cfg.head_dim,
            mla_original_qk_head_dim=0,
            mla_original_v_head_dim=0,
            rope_mode=kv_cache_mod.RopeMode.NONE,
            rope_scale=1,
            rope_theta=cfg.rope_theta,
            rope_scaling={},
            rope_ext_factors=relax.prim_value(0),
            rotary_dim=cfg.head_dim,
            enable_disaggregation=False,
            dtype=self.kv_dtype,
            target=self.target,
        )

    def get_default_spec(self):
        kv_obj = nn.spec.Object(object_type=kv_cache_mod.PagedKVCache)
        packed = {"param_mode": "packed", "effect_mode": "none"}
        return nn.spec.ModuleSpec.from_raw({
            "prefill": {"input_ids": nn.spec.Tensor([1, "seq_len"], "int32"), "paged_kv_cache": kv_obj,
                        "total_len": int, "seq_pos": int, "$": packed},
            "decode": {"input_ids": nn.spec.Tensor([1, 1], "int32"), "paged_kv_cache": kv_obj, "seq_pos": int,
                       "$": packed},
            "create_paged_kv_cache": {
                "max_batch_size": int, "max_total_seq_len": int, "prefill_chunk_size": int,
                "page_size": int, "support_sliding_window": int,
                "$": {"param_mode": "none", "effect_mode": "none"},
            },
        }, self)
