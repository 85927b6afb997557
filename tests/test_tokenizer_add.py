"""Tokenizers for checkpoints that lack tokenizer.json (issue #31): a SentencePiece tokenizer.model
converted (checked against the sentencepiece library itself, on a model it trains here), the
built Phi-3 tokenizer offered where the vocabulary is Phi-3's, and `edgesmith tokenizer add BUNDLE
FILE`, after which the bundle runs (the runner verifies every file against the manifest's sha256)
and pushes to a device (the push verifies what arrived). Reuses the session's Phi-3 chat bundle."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TEXTS = ["The quick brown fox", "Hello, wörld! 123  two  spaces", " leading space", "émoji 🙂 zz",
         "models\nnew line", "a"]


def edgesmith(*args):
    return subprocess.run([sys.executable, "-m", "edgesmith", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def _train(folder: Path, model_type: str) -> Path:
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    text = ("The quick brown fox jumps over the lazy dog. Edge devices run small language models. A phone, a "
            "board and a laptop each compile the model once. Tokens per second matter.\n") * 40
    (folder / "corpus.txt").write_text(text.replace(". ", ".\n"))
    # Llama's and Phi-3's settings: BPE, bytes for unknown characters, text left as it is.
    spm.SentencePieceTrainer.train(input=str(folder / "corpus.txt"), model_prefix=str(folder / "m"),
                                   vocab_size=400 if model_type == "bpe" else 60, model_type=model_type,
                                   byte_fallback=model_type == "bpe", normalization_rule_name="identity",
                                   remove_extra_whitespaces=False, character_coverage=1.0, minloglevel=2,
                                   hard_vocab_limit=False)
    return folder / "m.model"


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("spm"), "bpe")


def test_tokenizer_model_converts_to_what_sentencepiece_encodes(spm_model, tmp_path):
    import sentencepiece as spm
    from tokenizers import Tokenizer

    from edgesmith.compiler.models.spm import convert_model
    from edgesmith.errors import EdgesmithError

    assert convert_model(spm_model, tmp_path, vocab_size=512) == 400
    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert ids == sp.encode(text), text
        assert tok.decode(ids) == sp.decode(ids) == text
    assert tok.encode("hi").ids[0] == sp.bos_id()  # <s> in front, as the model was trained with
    # The tokens a Hugging Face folder adds after the pieces (a Phi-3 folder's chat tokens).
    (spm_model.parent / "added_tokens.json").write_text(json.dumps({"<|user|>": 400, "<|end|>": 401}))
    try:
        assert convert_model(spm_model, tmp_path / "added", vocab_size=512) == 402
    finally:
        (spm_model.parent / "added_tokens.json").unlink()
    tok = Tokenizer.from_file(str(tmp_path / "added" / "tokenizer.json"))
    assert tok.encode("<|user|>hi fox<|end|>", add_special_tokens=False).ids == [400] + sp.encode("hi fox") + [401]
    with pytest.raises(EdgesmithError, match="more than the model's 256 embedding rows"):
        convert_model(spm_model, tmp_path / "small", vocab_size=256)
    with pytest.raises(EdgesmithError, match="is a unigram SentencePiece model; .*tokenizer.json instead"):
        convert_model(_train(tmp_path / "uni", "unigram"), tmp_path / "u")


def test_a_checkpoint_without_tokenizer_json_uses_its_tokenizer_model_or_is_offered_phi3(spm_model, tmp_path):
    from hf_tiny import make_tiny_checkpoint

    from edgesmith.compiler.inputs.checkpoint import open_checkpoint

    folder = make_tiny_checkpoint("mini-4k", tmp_path / "spm", with_tokenizer=False, overrides={"vocab_size": 512})
    shutil.copy(spm_model, folder / "tokenizer.model")
    ckpt = open_checkpoint(folder)
    assert ckpt.tokenizer_entry.source == "tokenizer.model" and ckpt.tokenizer_path.is_file()

    bare = make_tiny_checkpoint("mini-4k", tmp_path / "bare", with_tokenizer=False)  # a 256-token toy vocabulary
    assert "--tokenizer phi3" not in open_checkpoint(bare).tokenizer_entry.note
    (bare / "config.json").write_text(json.dumps(dict(json.loads((bare / "config.json").read_text()),
                                                      vocab_size=32064)))
    note = open_checkpoint(bare).tokenizer_entry.note  # the config is read at open (the tensors at compile)
    assert "no tokenizer.json or tokenizer.model" in note and "compile with --tokenizer phi3" in note, note

    p = edgesmith("compile", folder, "--tokenizer", "phi3", "-o", tmp_path / "b")  # 512 rows: not Phi-3's
    assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "512 embedding rows" in p.stderr and not (tmp_path / "b").exists()


def _run(bundle, text="The quick brown fox"):
    p = edgesmith("run", bundle, "--prompt", text, "-n", "3", "--format", "json")
    return p, (json.loads(p.stdout) if p.returncode == 0 else None)


def test_tokenizer_add_updates_the_hashes_so_the_bundle_runs_and_pushes(phi3_chat_bundle, spm_model, tmp_path):
    import sentencepiece as spm
    import yaml

    from edgesmith.compiler.bundle.folder import read_manifest
    from edgesmith.runtime.devices import load_devices
    from edgesmith.runtime.session import RunnerSession
    from edgesmith.runtime.transports import TRANSPORTS, register
    from toy_transport import ENTRY

    bundle = tmp_path / "b"
    shutil.copytree(phi3_chat_bundle, bundle)
    before, ran = _run(bundle)
    assert before.returncode == 0, before.stderr

    # The check is real: a tokenizer.json swapped by hand is refused by the runner.
    shutil.copy(bundle / "tokenizer.json", tmp_path / "phi3.json")
    (bundle / "tokenizer.json").write_text((bundle / "tokenizer.json").read_text().replace("▁the", "▁thE", 1))
    p, _ = _run(bundle)
    assert p.returncode != 0 and "tokenizer.json" in p.stderr and "sha256" in p.stderr, p.stderr
    shutil.copy(tmp_path / "phi3.json", bundle / "tokenizer.json")

    p = edgesmith("tokenizer", "add", bundle, spm_model)
    assert p.returncode == 1 and "already carries a tokenizer.json; add --force" in p.stderr, p.stderr
    p = edgesmith("tokenizer", "add", bundle, spm_model, "--force")
    assert p.returncode == 0 and "manifest hashes updated" in p.stdout, p.stderr
    m = read_manifest(bundle)
    assert m.tokenizer.source == "tokenizer.model" and "chat_template.jinja" not in m.files
    p, got = _run(bundle)
    assert p.returncode == 0, p.stderr
    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    assert got["prompt_ids"] == [sp.bos_id()] + sp.encode("The quick brown fox")

    register(ENTRY)  # a device reached by the toy transport (a folder): pushed, verified, run there
    try:
        (tmp_path / "drawer").mkdir()
        entry = {"name": "drawer", "transport": "folder", "target": "host", "folder": {"root": str(tmp_path / "drawer")}}
        (tmp_path / "devices.yaml").write_text(yaml.safe_dump({"devices": [entry]}))
        device = load_devices(tmp_path / "devices.yaml")["drawer"]
        args = ["generate", "--tokens", ",".join(map(str, got["prompt_ids"])), "-n", "3"]
        with RunnerSession(bundle, device, timeout=300) as session:
            assert "tokenizer.json" in session.push_report.sent
            assert session.run(args)[-1]["output_ids"] == got["output_ids"]
    finally:
        del TRANSPORTS[ENTRY.name]

    # Back to the built Phi-3 tokenizer: the same text as the bundle compiled with it.
    p = edgesmith("tokenizer", "add", bundle, "phi3", "--force")
    assert p.returncode == 0, p.stderr
    p, again = _run(bundle)
    assert p.returncode == 0 and again["prompt_ids"] == ran["prompt_ids"] and again["text"] == ran["text"]


def test_a_tokenizer_that_cannot_serve_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """--tokenizer / tokenizer add: a missing path, a folder without a tokenizer, another model's
    tokenizer.json, a file that is no tokenizer, and a .model that is no SentencePiece model are
    each one line; the failed conversion leaves nothing in the cache."""
    from types import SimpleNamespace

    from edgesmith.compiler.inputs.tokenizer_files import from_spec
    from edgesmith.errors import EdgesmithError

    monkeypatch.setenv("EDGESMITH_CACHE", str(tmp_path / "cache"))
    config = SimpleNamespace(vocab_size=4)
    (tmp_path / "empty").mkdir()
    big = tmp_path / "big.json"  # a real tokenizer.json with more tokens than the model's 4 rows
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({f"w{i}": i for i in range(8)}, unk_token="w0")).save(str(big))
    (tmp_path / "junk.json").write_text("not json")
    (tmp_path / "junk.model").write_bytes(b"\xff\xff\xff")
    cases = {str(tmp_path / "missing"): "no such file; give phi3",
             str(tmp_path / "empty"): "the folder has no tokenizer.json or tokenizer.model",
             str(big): "it has 8 tokens, more than the model's 4 embedding rows",
             str(tmp_path / "junk.json"): "is not a tokenizer.json the tokenizers library reads",
             str(tmp_path / "junk.model"): "SentencePiece model"}
    for spec, says in cases.items():
        with pytest.raises(EdgesmithError) as err:
            from_spec(spec, config)
        assert says in str(err.value) and "\n" not in str(err.value), (spec, str(err.value))
    assert not list((tmp_path / "cache").glob("tokenizers/*"))  # no half-converted folder either
