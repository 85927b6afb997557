"""One Hugging Face folder that every engine in bench/peers.py reads: same weights for all.

    write_checkpoint(Path("bench/models/phi3-mini-4k-l4"), layers=4)

Phi3ForCausalLM built by transformers itself with the public Phi-3-mini-4k dimensions (hidden
3072, intermediate 8192, 32 heads, vocab 32064) but `layers` layers, random init (transformers'
own: N(0, 0.02^2)), saved as float16 safetensors (what the real checkpoint ships, as bf16).

Tokenizer: llama.cpp's converter insists on a SentencePiece `tokenizer.model`, and ONNX Runtime
GenAI's builder loads one through AutoTokenizer. Training one needs a corpus and would not give
32000 pieces, so `write_tokenizer` writes the SentencePiece model proto directly: the 3 specials,
256 byte-fallback pieces and filler pieces up to 32000, plus the same vocabulary as a
tokenizer.json (Unigram) for loaders that want a fast tokenizer. Speed never depends on which
pieces they are: the benchmarks feed token ids.
"""
from __future__ import annotations

import json
from pathlib import Path

# Phi-3-mini-4k-instruct's public config.json, depth aside.
MINI_4K = dict(
    vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_attention_heads=32,
    num_key_value_heads=32, max_position_embeddings=4096, original_max_position_embeddings=4096,
    rope_theta=10000.0, rms_norm_eps=1e-5, sliding_window=2047, tie_word_embeddings=False,
    bos_token_id=1, eos_token_id=32000, pad_token_id=32000, hidden_act="silu", initializer_range=0.02,
)
SPM_PIECES = 32000  # the SentencePiece part of Phi-3's vocabulary; 32000..32063 are added tokens


def write_checkpoint(out: Path, layers: int = 4, seed: int = 0) -> Path:
    """Write (once) config.json, model.safetensors and the tokenizer files; return the folder."""
    out = Path(out)
    if (out / "config.json").is_file() and list(out.glob("*.safetensors")) and (out / "tokenizer.model").is_file():
        return out
    write_weights(out, layers, seed)
    write_tokenizer(out)
    return out


def write_weights(out: Path, layers: int, seed: int = 0) -> None:
    """config.json and float16 model.safetensors: transformers' own random init, seeded."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(seed)
    model = Phi3ForCausalLM(Phi3Config(num_hidden_layers=layers, **MINI_4K)).to(torch.float16).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)


def _pieces() -> list[tuple[str, float, int]]:
    """(piece, score, type) in id order; types are SentencePiece's: 1 normal, 2 unknown, 3 control, 6 byte."""
    out = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
    out += [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]
    n = SPM_PIECES - len(out)
    out += [(f"\u2581w{i}", -float(i + 1), 1) for i in range(n)]
    return out


def write_tokenizer(out: Path) -> None:
    from sentencepiece import sentencepiece_model_pb2 as spm

    pieces = _pieces()
    proto = spm.ModelProto()
    for text, score, kind in pieces:
        p = proto.pieces.add()
        p.piece, p.score, p.type = text, score, kind
    ts = proto.trainer_spec
    ts.model_type = spm.TrainerSpec.UNIGRAM
    ts.vocab_size = len(pieces)
    ts.byte_fallback = True
    ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = 0, 1, 2, -1
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = True
    (out / "tokenizer.model").write_bytes(proto.SerializeToString())

    from tokenizers import Tokenizer, decoders, models, normalizers

    tok = Tokenizer(models.Unigram([(t, s) for t, s, _ in pieces], unk_id=0, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    extra = ["<|endoftext|>"] + [f"<|placeholder{i}|>" for i in range(MINI_4K["vocab_size"] - SPM_PIECES - 1)]
    tok.add_special_tokens(extra)  # ids 32000.. as in Phi-3
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "<|endoftext|>",
        "unk_token": "<unk>", "pad_token": "<|endoftext|>", "add_bos_token": True, "add_eos_token": False,
        "model_max_length": MINI_4K["max_position_embeddings"],
    }, indent=1))
