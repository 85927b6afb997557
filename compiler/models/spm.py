"""SentencePiece BPE vocabularies (Llama's, Phi-3's) as a Hugging Face tokenizer.json, the one
format a bundle carries: from a gguf's tokenizer fields (phi3/tokenizer.py) or from a
`tokenizer.model` (read here from its protobuf wire format, so compiling needs no sentencepiece).

A vocabulary is a dict: tokens, scores, types (SentencePiece's piece types, which gguf keeps:
NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6), bos / eos / unk / pad ids
(None: none), add_bos, add_dummy_prefix, chat_template.

The conversion: text " " -> "▁" and (add_dummy_prefix) one "▁" in front; BPE over the characters
where two neighbours merge when their concatenation is a piece, the highest-scoring such piece
first (one merge rule per way of cutting a normal piece into two pieces, ranked by its score:
what SentencePiece's BPE does); characters that are no piece become their UTF-8 bytes
(<0x..> pieces: byte_fallback); control, unknown and user-defined pieces are matched whole first.
"""
from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

from edgesmith.errors import EdgesmithError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_BPE = 2  # TrainerSpec.model_type: UNIGRAM 1, BPE 2, WORD 3, CHAR 4


def merges_by_score(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """One BPE merge (left, right) per cut of a normal piece into two pieces, best score first;
    cuts of one piece keep their left-to-right order. BPE then merges the best-scoring
    neighbour pair first, as SentencePiece does."""
    index = {t: i for i, t in enumerate(tokens)}
    ranked = []
    for i, (piece, score, kind) in enumerate(zip(tokens, scores, types)):
        if kind not in (NORMAL, USER_DEFINED) or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in index and right in index:
                ranked.append((-score, i, cut, left, right))
    ranked.sort()
    return [(left, right) for _, _, _, left, right in ranked]


def build(v: dict, rstrip: Callable[[str], bool] = lambda piece: False):
    """The `tokenizers.Tokenizer` of vocabulary `v`; rstrip(piece): whether that control piece
    swallows the whitespace after it (llama.cpp's Phi-3 rule; none elsewhere)."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    tokens, types = v["tokens"], v["types"]
    unk = tokens[v["unk"]]
    model = BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges_by_score(tokens, v["scores"], types),
                unk_token=unk, fuse_unk=True, byte_fallback=True)
    tok = Tokenizer(model)
    steps = [normalizers.Replace(" ", "▁")]
    if v.get("add_dummy_prefix", True):
        steps.insert(0, normalizers.Prepend("▁"))
    tok.normalizer = normalizers.Sequence(steps)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
                                    + ([decoders.Strip(" ", 1, 0)] if v.get("add_dummy_prefix", True) else []))
    # Added in id order (their ids are the vocabulary's): control pieces are special; a
    # user-defined piece is matched as a whole but is text (HF Phi-3 marks </s> special=False).
    added = [AddedToken(piece, special=kind != USER_DEFINED, normalized=False,
                        rstrip=kind != UNKNOWN and rstrip(piece), lstrip=False, single_word=False)
             for piece, kind in zip(tokens, types) if kind in (CONTROL, USER_DEFINED, UNKNOWN)]
    tok.add_tokens(added)
    # Tokens added beside the model's pieces (a Hugging Face folder's chat tokens: tokenizer_config.json's
    # added_tokens_decoder, or added_tokens.json), each at its own id, right after the pieces.
    extra = sorted(v.get("added", {}).items())
    for want, (piece, flags) in extra:
        if want != tok.get_vocab_size(with_added_tokens=True):
            raise EdgesmithError(f"added token {piece!r} has id {want}, but the tokenizer's next id is "
                                 f"{tok.get_vocab_size(with_added_tokens=True)}: the added tokens leave a gap")
        tok.add_tokens([AddedToken(piece, special=flags.get("special", True), normalized=False,
                                   rstrip=flags.get("rstrip", False), lstrip=flags.get("lstrip", False),
                                   single_word=False)])
    if v["add_bos"] and v["bos"] is not None:
        bos = tokens[v["bos"]]
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, v["bos"])])
    return tok


def write(v: dict, out: Path, rstrip: Callable[[str], bool] = lambda piece: False, **config_extra) -> None:
    """out/tokenizer.json and out/tokenizer_config.json (bos/eos/unk/pad, chat template) of `v`."""
    tokens = v["tokens"]
    Path(out).mkdir(parents=True, exist_ok=True)
    build(v, rstrip).save(str(Path(out) / "tokenizer.json"))

    def name(key):
        return tokens[v[key]] if v.get(key) is not None else None

    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": name("bos"), "eos_token": name("eos"),
              "unk_token": name("unk"), "pad_token": name("pad"), "add_bos_token": v["add_bos"],
              "add_eos_token": False, "clean_up_tokenization_spaces": False,
              **({"chat_template": v["chat_template"]} if v.get("chat_template") else {}), **config_extra}
    (Path(out) / "tokenizer_config.json").write_text(json.dumps(config, indent=1, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------ tokenizer.model (protobuf)

def _fields(buf: bytes, what: str):
    """(field number, wire type, value) of one protobuf message: varints as int, 32-bit as bytes,
    length-delimited as bytes (64-bit ones are skipped)."""
    pos, end = 0, len(buf)

    def varint():
        nonlocal pos
        shift = value = 0
        while True:
            if pos >= end:
                raise EdgesmithError(f"{what} ends inside a number: it is not a SentencePiece model (or it is cut short)")
            b = buf[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value

    while pos < end:
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            yield field, wire, varint()
        elif wire == 1:
            pos += 8
        elif wire == 2:
            n = varint()
            if pos + n > end:
                raise EdgesmithError(f"{what} is cut short: it is not a whole SentencePiece model")
            yield field, wire, buf[pos:pos + n]
            pos += n
        elif wire == 5:
            yield field, wire, buf[pos:pos + 4]
            pos += 4
        else:
            raise EdgesmithError(f"{what} is not a SentencePiece model (protobuf wire type {wire})")


def read_model(path: Path) -> dict:
    """The vocabulary of a SentencePiece `tokenizer.model` (ModelProto: pieces = 1, trainer_spec = 2,
    normalizer_spec = 3). Only BPE models convert exactly (Llama's and Phi-3's are); the normalizer
    must leave text as it is (identity, no whitespace folding), as theirs does."""
    path = Path(path)
    what = f"{path}"
    tokens, scores, types = [], [], []
    trainer, normalizer = {}, {}
    for field, _, value in _fields(path.read_bytes(), what):
        if field == 1:  # SentencePiece: piece = 1, score = 2 (float), type = 3
            piece, score, kind = "", 0.0, NORMAL
            for f, _, v in _fields(value, what):
                if f == 1:
                    piece = v.decode("utf-8")
                elif f == 2:
                    score = struct.unpack("<f", v)[0]
                elif f == 3:
                    kind = v
            tokens.append(piece)
            scores.append(score)
            types.append(kind)
        elif field in (2, 3):
            spec = trainer if field == 2 else normalizer
            for f, _, v in _fields(value, what):
                spec[f] = v
    if not tokens:
        raise EdgesmithError(f"{what} holds no pieces: it is not a SentencePiece model")
    model_type = trainer.get(3, 1)
    if model_type != _BPE:
        kind = {1: "unigram", 3: "word", 4: "char"}.get(model_type, str(model_type))
        raise EdgesmithError(f"{what} is a {kind} SentencePiece model; edgesmith converts BPE ones (Llama's, "
                             "Phi-3's) exactly: give the checkpoint's tokenizer.json instead")
    rule = normalizer.get(1, b"nmt_nfkc").decode()
    if rule != "identity" or normalizer.get(4, 1):
        raise EdgesmithError(f"{what} normalizes text ({rule}{', folding whitespace' if normalizer.get(4, 1) else ''}), "
                             "which a tokenizer.json made from it would not repeat; give the checkpoint's "
                             "tokenizer.json instead")

    def special(field, default):
        value = trainer.get(field, default)
        value = value - (1 << 64) if value >= 1 << 63 else value  # int32 -1 is a 10-byte varint
        return value if 0 <= value < len(tokens) else None

    return {"tokens": tokens, "scores": scores, "types": types, "unk": special(40, 0) or 0, "bos": special(41, 1),
            "eos": special(42, 2), "pad": special(43, -1), "add_bos": True,
            "add_dummy_prefix": bool(normalizer.get(3, 1)), "chat_template": None}


def added_tokens(folder: Path, first: int) -> dict[int, tuple[str, dict]]:
    """{id: (token, flags)} a Hugging Face folder adds beside a tokenizer.model's `first` pieces:
    tokenizer_config.json's added_tokens_decoder (with its rstrip/lstrip/special flags), else
    added_tokens.json (special, nothing stripped)."""
    config, plain = Path(folder) / "tokenizer_config.json", Path(folder) / "added_tokens.json"
    try:
        if config.is_file():
            decoder = json.loads(config.read_text()).get("added_tokens_decoder") or {}
            if decoder:
                return {int(i): (t["content"], t) for i, t in decoder.items() if int(i) >= first}
        if plain.is_file():
            return {int(i): (t, {}) for t, i in json.loads(plain.read_text()).items() if int(i) >= first}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise EdgesmithError(f"the added tokens of {folder} (tokenizer_config.json / added_tokens.json) cannot be "
                             f"read ({err}); fix or remove the file") from None
    return {}


def convert_model(path: Path, out: Path, vocab_size: int | None = None) -> int:
    """out/tokenizer.json (+ tokenizer_config.json) from the SentencePiece model at `path`, with
    the tokens its folder adds (added_tokens); the whole must fit a model of `vocab_size` rows.
    Returns the number of tokens."""
    v = read_model(path)
    v["added"] = added_tokens(Path(path).parent, len(v["tokens"]))
    size = len(v["tokens"]) + len(v["added"])
    if vocab_size is not None and size > vocab_size:
        raise EdgesmithError(f"{path} has {size} tokens, more than the model's {vocab_size} "
                             "embedding rows: it is another model's tokenizer")
    write(v, out, edgesmith_source=f"converted from {Path(path).name}")
    return size
