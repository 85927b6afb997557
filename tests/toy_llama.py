"""A toy model architecture, whole in this one file: Llama (`LlamaForCausalLM`), as a new
architecture would be added to edgesmith (its folder under compiler/models/ and one `register`).
tests/test_registries.py registers TOY_LLAMA and checks it against transformers' LlamaForCausalLM.

Its model is its own, not Phi-3's: q, k and v are three linears (Llama's checkpoints store them
apart; their outputs are joined into the (b, t, heads, d) layout the paged KV cache takes), while
gate and up are one linear that the name map fuses from Llama's two tensors (gate rows, then up
rows). Llama's config.json reads as Phi-3's does (RMSNorm, default RoPE, grouped-query attention),
so its config class is Phi3Config's under another architecture name; everything else the rest of
edgesmith asks (linear layers, bytes per token, the weights a token reads) is answered here.
"""
from __future__ import annotations

from edgesmith.compiler.context import KV_DTYPES
from edgesmith.compiler.kernels import cpu as kernels
from edgesmith.compiler.kernels.family import kernel_family
from edgesmith.compiler.kernels.linear import Linears
from edgesmith.compiler.models import LinearShape, ModelArchitecture, ParamSource, stack_rows
from edgesmith.compiler.models.phi3 import config as phi3_config
from edgesmith.targets.tvm_api import kv_cache_mod, nn, relax

ARCHITECTURE = "LlamaForCausalLM"
op = nn.op


class LlamaConfig(phi3_config.Phi3Config):
    architecture = ARCHITECTURE


def parse(raw: dict, where: str = "config") -> LlamaConfig:
    if raw.get("attention_bias") or raw.get("mlp_bias"):
        from edgesmith.errors import ConfigError

        raise ConfigError(f"{where}: the toy Llama has no biases")
    return phi3_config.parse(raw, where, config_class=LlamaConfig)


# ---------------------------------------------------------------- checkpoints: tensors and the name map

def expected_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    h, d, inter = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, h), "model.norm.weight": (h,)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                       p + "self_attn.q_proj.weight": (cfg.num_attention_heads * d, h),
                       p + "self_attn.k_proj.weight": (cfg.num_key_value_heads * d, h),
                       p + "self_attn.v_proj.weight": (cfg.num_key_value_heads * d, h),
                       p + "self_attn.o_proj.weight": (h, cfg.num_attention_heads * d),
                       p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
                       p + "mlp.down_proj.weight": (h, inter)})
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, h)
    return shapes


def param_source(cfg: LlamaConfig, param: str) -> ParamSource:
    if param.endswith("mlp.gate_up_proj.weight"):  # ours: (2 * intermediate, hidden), gate rows first
        prefix = param[: -len("gate_up_proj.weight")]
        return ParamSource((prefix + "gate_proj.weight", prefix + "up_proj.weight"), combine=stack_rows)
    return ParamSource((param,))


# ---------------------------------------------------------------- the nn model

class RMSNorm(nn.Module):
    def __init__(self, hidden: int, eps: float):
        self.weight = nn.Parameter((hidden,), "float32")
        self.eps = eps

    def forward(self, x):
        return op.rms_norm(x, self.weight, axes=[-1], epsilon=self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig, linear: Linears):
        self.cfg = cfg
        d, hq, hkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        self.q_proj = linear(cfg.hidden_size, hq * d)
        self.k_proj = linear(cfg.hidden_size, hkv * d)
        self.v_proj = linear(cfg.hidden_size, hkv * d)
        self.o_proj = linear(hq * d, cfg.hidden_size)

    def forward(self, x, kv, layer_id: int, positions, kv_dtype: str):
        cfg = self.cfg
        d, hq, hkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        b, t, _ = x.shape
        # three projections joined into the cache's (b, t, hq + 2 hkv, d)
        qkv = op.concat([op.reshape(self.q_proj(x), (b, t, hq, d)), op.reshape(self.k_proj(x), (b, t, hkv, d)),
                         op.reshape(self.v_proj(x), (b, t, hkv, d))], dim=2)
        qkv = op.tensor_expr_op(
            lambda q, p: kernels.rope(q, p, None, n_rot_heads=hq + hkv, rotary_dim=cfg.rotary_dim,
                                      theta=cfg.rope_theta, attention_factor=1.0,
                                      original_max_pos=cfg.original_max_position_embeddings, out_dtype=kv_dtype),
            "rope", [qkv, positions])
        out = kv.attention_with_fused_qkv(layer_id, qkv, hq, sm_scale=d**-0.5)  # (b, t, hq, d)
        if kv_dtype != "float32":
            out = op.astype(out, "float32")
        return self.o_proj(op.reshape(out, (b, t, hq * d)))


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig, linear: Linears):
        self.gate_up_proj = linear(cfg.hidden_size, 2 * cfg.intermediate_size)
        self.down_proj = linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x):
        gate, up = op.split(self.gate_up_proj(x), 2, axis=-1)
        return self.down_proj(op.silu(gate) * up)


class Layer(nn.Module):
    def __init__(self, cfg: LlamaConfig, linear: Linears):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, linear)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg, linear)

    def forward(self, h, kv, layer_id, positions, kv_dtype):
        h = h + self.self_attn(self.input_layernorm(h), kv, layer_id, positions, kv_dtype)
        return h + self.mlp(self.post_attention_layernorm(h))


class Body(nn.Module):
    def __init__(self, cfg: LlamaConfig, linear: Linears, quantize_embedding: bool):
        self.embed_tokens = linear(cfg.hidden_size, cfg.vocab_size, quantize=quantize_embedding)
        self.layers = nn.ModuleList([Layer(cfg, linear) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class ToyLlamaForCausalLM(nn.Module):
    """(config, quantization, *, quantize_embedding, target, kv_dtype, tuning): what the compiler
    builds any architecture's model with; prefill, decode, create_paged_kv_cache as the runner and
    the engine call them."""

    def __init__(self, cfg: LlamaConfig, quant, *, quantize_embedding: bool = True, target=None,
                 kv_dtype: str = "float32", tuning=None):
        assert kv_dtype in KV_DTYPES
        self.cfg, self.target, self.kv_dtype = cfg, target, kv_dtype
        linear = Linears(quant, kernel_family(target, tuning))
        self.model = Body(cfg, linear, quantize_embedding)
        if not cfg.tie_word_embeddings:
            self.lm_head = linear(cfg.hidden_size, cfg.vocab_size, quantize=quantize_embedding)

    def _forward(self, input_ids, kv, seq_pos):
        b, t = input_ids.shape
        h = self.model.embed_tokens.lookup(input_ids)
        positions = op.tensor_expr_op(kernels.positions, "positions", [input_ids, seq_pos])
        for i, layer in enumerate(self.model.layers):
            h = layer(h, kv, i, positions, self.kv_dtype)
        h = self.model.norm(h)
        if t != 1:
            h = op.tensor_expr_op(kernels.last_token, "last_token", [h])
        head = self.model.embed_tokens if self.cfg.tie_word_embeddings else self.lm_head
        return head(h), kv

    def prefill(self, input_ids, paged_kv_cache, total_len, seq_pos):  # total_len: longrope's; Llama's RoPE ignores it
        return self._forward(input_ids, paged_kv_cache, seq_pos)

    def decode(self, input_ids, paged_kv_cache, seq_pos):
        return self._forward(input_ids, paged_kv_cache, seq_pos)

    def create_paged_kv_cache(self, max_batch_size, max_total_seq_len, prefill_chunk_size, page_size,
                              support_sliding_window):
        cfg = self.cfg
        return kv_cache_mod.TIRPagedKVCache(
            attn_kind="mha", max_batch_size=max_batch_size, max_total_seq_len=max_total_seq_len,
            prefill_chunk_size=prefill_chunk_size, page_size=page_size,
            support_sliding_window=support_sliding_window, layer_partition=relax.ShapeExpr([0, cfg.num_hidden_layers]),
            num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_key_value_heads, qk_head_dim=cfg.head_dim, v_head_dim=cfg.head_dim,
            mla_original_qk_head_dim=0, mla_original_v_head_dim=0, rope_mode=kv_cache_mod.RopeMode.NONE,
            rope_scale=1, rope_theta=cfg.rope_theta, rope_scaling={}, rope_ext_factors=relax.prim_value(0),
            rotary_dim=cfg.head_dim, enable_disaggregation=False, dtype=self.kv_dtype, target=self.target)

    def get_default_spec(self):
        kv_obj = nn.spec.Object(object_type=kv_cache_mod.PagedKVCache)
        packed = {"param_mode": "packed", "effect_mode": "none"}
        return nn.spec.ModuleSpec.from_raw({
            "prefill": {"input_ids": nn.spec.Tensor([1, "seq_len"], "int32"), "paged_kv_cache": kv_obj,
                        "total_len": int, "seq_pos": int, "$": packed},
            "decode": {"input_ids": nn.spec.Tensor([1, 1], "int32"), "paged_kv_cache": kv_obj, "seq_pos": int,
                       "$": packed},
            "create_paged_kv_cache": {"max_batch_size": int, "max_total_seq_len": int, "prefill_chunk_size": int,
                                      "page_size": int, "support_sliding_window": int,
                                      "$": {"param_mode": "none", "effect_mode": "none"}},
        }, self)


# ---------------------------------------------------------------- what the runtime asks

def linear_layers(cfg: LlamaConfig) -> list[LinearShape]:
    d, h = cfg.head_dim, cfg.hidden_size
    return [LinearShape("q", cfg.num_attention_heads * d, h), LinearShape("k", cfg.num_key_value_heads * d, h),
            LinearShape("v", cfg.num_key_value_heads * d, h),
            LinearShape("o", h, cfg.num_attention_heads * d), LinearShape("gate_up", 2 * cfg.intermediate_size, h),
            LinearShape("down", h, cfg.intermediate_size), LinearShape("lm_head", cfg.vocab_size, h)]


def kv_bytes_per_token(cfg: LlamaConfig, dtype: str) -> int:
    return cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * {"float32": 4, "float16": 2}[dtype]


def activation_bytes_per_token(cfg: LlamaConfig) -> int:
    # q, k, v apart and their joined copy, the residual and the norm: 6 x hidden; gate_up; the logits
    return 4 * (6 * cfg.hidden_size + 2 * cfg.intermediate_size + cfg.vocab_size)


def weights_read_per_token(cfg: LlamaConfig, params: dict[str, int]) -> int:
    embedding = sum(b for name, b in params.items() if name.startswith("model.embed_tokens."))
    rest = sum(params.values()) - embedding
    return rest + (embedding if cfg.tie_word_embeddings else embedding // cfg.vocab_size)


TOY_LLAMA = ModelArchitecture(
    architecture=ARCHITECTURE, name="toy_llama", models="a test's Llama", parse_config=parse,
    config_class=LlamaConfig, expected_shapes=expected_shapes, param_source=param_source,
    model=f"{__name__}:ToyLlamaForCausalLM", linear_layers=linear_layers, kv_bytes_per_token=kv_bytes_per_token,
    activation_bytes_per_token=activation_bytes_per_token, weights_read_per_token=weights_read_per_token,
    shape_id=lambda cfg: f"llama:h={cfg.hidden_size}:i={cfg.intermediate_size}:l={cfg.num_hidden_layers}",
    describe=lambda cfg: f"toy Llama: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
                         f"heads {cfg.num_attention_heads}/{cfg.num_key_value_heads} kv",
    random_presets={"toy-llama-tiny": {
        "architectures": [ARCHITECTURE], "vocab_size": 512, "hidden_size": 128, "intermediate_size": 256,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False, "bos_token_id": 1,
        "eos_token_id": 2}})
