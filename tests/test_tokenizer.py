"""The real Phi-3 tokenizer `edgesmith tokenizer fetch` builds (scripts/install.sh runs it; CI runs
install.sh first), checked against what it was made from, independently of our converter:
llama.cpp's own test cases (ids llama.cpp's tokenizer produced, shipped with the vocabulary), the
gguf file read by the `gguf` package, transformers' chat templating, and Phi-3's chat format
written out by hand. Then which bundles carry which tokenizer, and text in / text out on a bundle."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgesmith.compiler.models.phi3 import tokenizer as phi3_tokenizer
from edgesmith.compiler.inputs.random_weights import RandomCheckpoint

# Phi-3's chat tokens (the vocabulary's control pieces) and two word pieces, written out.
BOS, ENDOFTEXT, ASSISTANT, SYSTEM, END, USER = 1, 32000, 32001, 32006, 32007, 32010
HELLO = 15043  # "▁Hello"
PHI3_PRESETS = ["phi-3-mini-4k", "phi-3-mini-128k", "phi-3-medium-4k", "phi-3.5-mini"]


@pytest.fixture(scope="module")
def phi3_dir() -> Path:
    folder = phi3_tokenizer.cached()
    if folder is None:
        pytest.fail(f"the Phi-3 tokenizer is not built in {phi3_tokenizer.cache_dir()}: run `edgesmith tokenizer "
                    "fetch` once (scripts/install.sh does)")
    return folder


@pytest.fixture(scope="module")
def hf_tok(phi3_dir):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(phi3_dir / "tokenizer.json"))


@pytest.fixture(scope="module")
def tok(phi3_dir):
    from edgesmith.runtime.text import Tokenizer

    return Tokenizer(phi3_dir, "cache")


def llama_cpp_cases(folder: Path) -> list[tuple[str, list[int]]]:
    """The .inp/.out pairs, split here as llama.cpp's test-tokenizer-0.cpp splits them."""
    raw = (folder / "ggml-vocab-phi-3.gguf.inp").read_text(encoding="utf-8")
    texts = raw.split("\n__ggml_vocab_test__\n")
    if texts[-1] == "":
        texts.pop()
    ids = [[int(x) for x in line.split()] for line in
           (folder / "ggml-vocab-phi-3.gguf.out").read_text().splitlines()]
    assert len(texts) == len(ids)
    return list(zip(texts, ids))


# ---------------------------------------------------------------- the tokenizer itself

def test_every_llama_cpp_case_encodes_to_its_ids_and_decodes_back(phi3_dir, hf_tok, tok):
    cases = llama_cpp_cases(phi3_dir)
    assert len(cases) == 46 and any("\t" in t for t, _ in cases) and any(ord(c) > 0xFFFF for t, _ in cases for c in t)
    for text, want in cases:
        assert hf_tok.encode(text, add_special_tokens=False).ids == want, repr(text)
        assert hf_tok.decode(want) == text, repr(text)
        # what `run --prompt` sends: the vocabulary's add_bos_token puts <s> in front
        assert tok.encode(text) == ([BOS] + want if text else [BOS]), repr(text)
        assert tok.decode(tok.encode(text)) == text


def test_vocabulary_is_the_gguf_one(phi3_dir, hf_tok):
    """Every id names the piece the gguf file (read with the gguf package) gives it."""
    from gguf import GGUFReader

    field = GGUFReader(str(phi3_dir / "ggml-vocab-phi-3.gguf")).fields["tokenizer.ggml.tokens"]
    pieces = [bytes(field.parts[i]).decode() for i in field.data]
    assert len(pieces) == hf_tok.get_vocab_size() == 32064
    vocab = hf_tok.get_vocab()
    assert all(vocab[p] == i for i, p in enumerate(pieces))
    assert [pieces[i] for i in (BOS, ENDOFTEXT, ASSISTANT, SYSTEM, END, USER)] == \
        ["<s>", "<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"]


def test_made_from_the_registry_package(phi3_dir):
    import hashlib

    source = json.loads((phi3_dir / "source.json").read_text())
    assert source["package"] == "llama-cpp-python==0.3.36"
    assert source["member"].endswith("vendor/llama.cpp/models/ggml-vocab-phi-3.gguf")
    assert source["gguf_sha256"] == hashlib.sha256((phi3_dir / "ggml-vocab-phi-3.gguf").read_bytes()).hexdigest()


def test_extract_and_convert_from_an_sdist(phi3_dir, tmp_path):
    """fetch's steps after pip: only the three files under vendor/llama.cpp/models/ come out of the
    archive (a look-alike elsewhere or a `..` path is ignored), their conversion passes every case;
    an archive without them is refused in one line."""
    import tarfile

    from edgesmith.errors import EdgesmithError

    def sdist(name, members):
        path = tmp_path / name
        with tarfile.open(path, "w:gz") as tar:
            for arcname, src in members:
                tar.add(src, arcname=arcname)
        return path

    decoy = tmp_path / "decoy"
    decoy.write_bytes(b"not a vocabulary")
    root = "llama_cpp_python-0.3.36/"
    files = [(root + "vendor/llama.cpp/models/" + f, phi3_dir / f) for f in phi3_tokenizer.FILES]
    good = sdist("good.tar.gz", [(root + "../ggml-vocab-phi-3.gguf", decoy),
                                 (root + "other/ggml-vocab-phi-3.gguf", decoy), *files])
    out = tmp_path / "out"
    out.mkdir()
    assert phi3_tokenizer._extract(good, out) == files[0][0]
    assert sorted(p.name for p in out.iterdir()) == sorted(phi3_tokenizer.FILES)
    assert (out / "ggml-vocab-phi-3.gguf").read_bytes() == (phi3_dir / "ggml-vocab-phi-3.gguf").read_bytes()
    phi3_tokenizer.convert(out / "ggml-vocab-phi-3.gguf", out)
    assert phi3_tokenizer.check_cases(out) == 46
    bad = sdist("bad.tar.gz", files[:2])
    with pytest.raises(EdgesmithError, match="ggml-vocab-phi-3.gguf.out"):
        phi3_tokenizer._extract(bad, tmp_path / "out")


# ---------------------------------------------------------------- chat format

def test_chat_turn_ids_are_phi3s_format(tok):
    """<s><|user|>\\nHello<|end|>\\n<|assistant|>\\n: each chat token swallows the newline after it
    (rstrip, as Phi-3's tokenizer_config and llama.cpp set them), "Hello" gets its leading ▁."""
    from edgesmith.runtime.chat import Conversation, stop_ids

    assert Conversation(tok).user("Hello") == [BOS, USER, HELLO, END, ASSISTANT]
    assert stop_ids(tok, [ENDOFTEXT]) == {ENDOFTEXT, END}


def test_conversation_feeds_what_transformers_templates(phi3_dir, tok):
    """Three turns fed on one cache (prompt, reply but its last token, next turn led by it) are
    exactly the ids transformers' apply_chat_template gives for the whole conversation."""
    from transformers import PreTrainedTokenizerFast

    from edgesmith.runtime.chat import Conversation

    config = json.loads((phi3_dir / "tokenizer_config.json").read_text())
    hf = PreTrainedTokenizerFast(tokenizer_file=str(phi3_dir / "tokenizer.json"), bos_token="<s>",
                                 eos_token="<|endoftext|>")
    conv, cache, messages, pending = Conversation(tok), [], [], None
    for user, reply in [("What is the capital of France?", "Paris."), ("And of Italy?\n  Say it twice.", "Rome Rome"),
                        ("Thanks!", None)]:
        turn = conv.user(user)
        assert pending is None or turn[0] == pending  # the reply's <|end|>, fed once
        cache += turn
        messages.append({"role": "user", "content": user})
        if reply is not None:
            out = tok.encode(reply, special=False) + [END]  # what the model would sample, ended by <|end|>
            assert conv.assistant(out, {END, ENDOFTEXT}) == reply
            cache += out[:-1]  # decode feeds every sampled token but the last
            pending = out[-1]
            messages.append({"role": "assistant", "content": reply})
    want = hf.apply_chat_template(messages, chat_template=config["chat_template"], add_generation_prompt=True,
                                  tokenize=True)
    want = want["input_ids"] if hasattr(want, "keys") else want  # transformers 5: a BatchEncoding
    assert cache == list(want) and cache.count(BOS) == 1 and cache.count(USER) == 3


# ---------------------------------------------------------------- which bundle gets which tokenizer

@pytest.mark.parametrize("preset", PHI3_PRESETS)
def test_phi3_vocabulary_presets_carry_the_built_tokenizer(preset, phi3_dir):
    ckpt = RandomCheckpoint(preset, layers=1)
    assert ckpt.config.vocab_size == 32064
    assert ckpt.tokenizer_path == phi3_dir / "tokenizer.json"
    assert ckpt.tokenizer_entry.source == "phi-3 vocabulary"


@pytest.mark.parametrize("preset, needle", [("phi-4-mini", "Phi-4-mini's 200064-token vocabulary"),
                                            ("tiny", "512-token toy vocabulary")])
def test_other_vocabularies_get_none_and_say_why(preset, needle, phi3_dir):
    ckpt = RandomCheckpoint(preset, layers=1)
    assert ckpt.tokenizer_path is None and needle in ckpt.tokenizer_entry.note


def edgesmith(*args, env=None, stdin=None):
    return subprocess.run([sys.executable, "-m", "edgesmith", *map(str, args)], capture_output=True, text=True,
                          timeout=900, env=env, input=stdin)


@pytest.fixture(scope="module")
def phi3_bundle(phi3_dir, tmp_path_factory) -> Path:
    """random:phi-3-mini-4k with one layer: the real vocabulary, the embedded default's shapes."""
    out = tmp_path_factory.mktemp("phi3") / "b"
    p = edgesmith("compile", "random:phi-3-mini-4k:layers=1", "-o", out, "-q")
    assert p.returncode == 0, p.stderr
    return out


@pytest.mark.slow
def test_random_bundle_holds_the_built_tokenizer(phi3_bundle, phi3_dir):
    assert (phi3_bundle / "tokenizer.json").read_bytes() == (phi3_dir / "tokenizer.json").read_bytes()
    manifest = json.loads((phi3_bundle / "manifest.json").read_text())
    assert manifest["tokenizer"]["source"] == "phi-3 vocabulary" and manifest["tokenizer"]["chat_template"]
    info = edgesmith("inspect", phi3_bundle).stdout
    assert "tokenizer   built Phi-3 vocabulary (32064 tokens, from llama-cpp-python==0.3.36" in info


@pytest.mark.slow
def test_checkpoint_tokenizer_and_template_are_used_as_is(tiny_ckpt_dir, tmp_path):
    """A folder's tokenizer.json and chat template go into the bundle byte for byte and are the
    ones used, though the Phi-3 one is built (its vocabulary would be wrong for this model)."""
    import shutil

    from jinja2 import Template

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt_dir("mini-4k"), ckpt)
    template = "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}assistant"
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "eos_token": "</s>"}))
    out = tmp_path / "b"
    assert edgesmith("compile", ckpt, "--quant", "q4f32", "-o", out, "-q").returncode == 0
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (ckpt / name).read_bytes()
    assert "the checkpoint's tokenizer.json, with its chat template" in edgesmith("inspect", out).stdout
    p = edgesmith("run", out, "--prompt", "the water is hot", "--chat", "-n", "3", "--json", "--ignore-eos")
    assert p.returncode == 0, p.stderr
    from tokenizers import Tokenizer

    rendered = Template(template).render(messages=[{"role": "user", "content": "the water is hot"}])
    assert json.loads(p.stdout)["prompt_ids"] == Tokenizer.from_file(str(ckpt / "tokenizer.json")).encode(
        rendered, add_special_tokens=False).ids


@pytest.mark.slow
def test_prompt_without_the_tokenizer_names_the_command(tmp_path):
    """Cache empty, no network: compile says the bundle has no tokenizer, --prompt says which
    command makes it (one line), and nothing was downloaded or built meanwhile."""
    cache = tmp_path / "cache"
    dead = "http://127.0.0.1:9"  # nothing listens: any download attempt fails at once
    env = dict(os.environ, EDGESMITH_CACHE=str(cache), PIP_INDEX_URL=dead + "/simple", PIP_NO_INDEX="1",
               http_proxy=dead, https_proxy=dead, HTTP_PROXY=dead, HTTPS_PROXY=dead, no_proxy="", NO_PROXY="")
    out = tmp_path / "b"
    p = edgesmith("compile", "random:phi-3-mini-4k:layers=1", "-o", out, env=env)
    assert p.returncode == 0, p.stderr
    assert "no tokenizer in the bundle" in p.stderr and "edgesmith tokenizer fetch" in p.stderr
    for args in (["--prompt", "Hello"], ["--prompt", "Hello", "--chat"]):
        p = edgesmith("run", out, *args, "-n", "2", env=env)
        assert p.returncode == 1 and "Traceback" not in p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("edgesmith: error:") and "`edgesmith tokenizer fetch`" in lines[0]
    assert not (out / "tokenizer.json").exists() and not (cache / "tokenizers" / "phi-3").exists()
    assert "none: random:phi-3-mini-4k's text needs the Phi-3 tokenizer" in edgesmith("inspect", out, env=env).stdout


# ---------------------------------------------------------------- text in, text out

@pytest.mark.slow
def test_prompt_streams_text_and_chat_stops_at_end(phi3_bundle, hf_tok):
    p = edgesmith("run", phi3_bundle, "--prompt", "The capital of France is", "-n", "8", "--json", "--ignore-eos")
    r = json.loads(p.stdout)
    assert r["prompt_ids"] == [BOS] + hf_tok.encode("The capital of France is", add_special_tokens=False).ids
    assert r["text"] == hf_tok.decode(r["output_ids"], skip_special_tokens=True)
    streamed = edgesmith("run", phi3_bundle, "--prompt", "The capital of France is", "-n", "8", "--ignore-eos")
    assert streamed.returncode == 0 and streamed.stdout == r["text"] + "\n"
    chat = json.loads(edgesmith("run", phi3_bundle, "--prompt", "Hello", "--chat", "-n", "8", "--json").stdout)
    assert chat["prompt_ids"] == [BOS, USER, HELLO, END, ASSISTANT]
    ids = chat["output_ids"]
    if chat["stop_reason"] == "stop":
        assert ids[-1] in (END, ENDOFTEXT) and not {END, ENDOFTEXT} & set(ids[:-1])
    else:
        assert len(ids) == 8 and not {END, ENDOFTEXT} & set(ids)


@pytest.mark.slow
def test_interactive_keeps_the_conversation_on_one_cache(phi3_bundle, tok):
    """Two turns piped in: turn 2 feeds only its own ids (led by reply 1's last token), and its
    reply is what a one-shot generate of the whole conversation gives."""
    from edgesmith.runtime.session import run_runner

    p = edgesmith("run", phi3_bundle, "--interactive", "-n", "5", "--json", "--ignore-eos",
                  stdin="What is the capital of France?\nAnd of Italy?\n")
    assert p.returncode == 0, p.stderr
    t1, t2 = [json.loads(line) for line in p.stdout.splitlines()]
    assert t1["prompt_ids"][:2] == [BOS, USER] and t1["prompt_ids"][-2:] == [END, ASSISTANT]
    assert t2["prompt_ids"] == [t1["output_ids"][-1], END, USER, *tok.encode("And of Italy?", special=False), END,
                                ASSISTANT]
    assert t2["context_tokens"] == len(t1["prompt_ids"]) + 4 + len(t2["prompt_ids"]) + 4
    whole = t1["prompt_ids"] + t1["output_ids"][:-1] + t2["prompt_ids"]
    ref = run_runner(phi3_bundle, ["generate", str(phi3_bundle), "--tokens", ",".join(map(str, whole)), "-n", "5"],
                     timeout=300)[-1]
    assert t2["output_ids"] == ref["output_ids"]


@pytest.mark.slow
def test_chat_stops_at_end_and_prints_nothing_after_it(phi3_dir, hf_tok, tmp_path):
    """README: --chat stops where the template ends a reply, at <|end|>. Random weights never emit
    it, so a one-layer model on the Phi-3 vocabulary is wired to: its residual stream carries the
    current token's embedding (large, one direction each for the assistant tag, "Paris" and "!"),
    and its lm_head maps the tag to "Paris", "Paris" to "!" and "!" to <|end|> by a wide margin.
    The reply is "Paris!" and <|end|>; nothing after it is generated or printed. With
    --ignore-eos the same model goes on past <|end|>: the stop, not the length, ended it."""
    import shutil

    import torch
    from hf_tiny import make_tiny_model

    paris, bang = hf_tok.encode("Paris!", add_special_tokens=False).ids
    model = make_tiny_model("mini-4k", overrides=dict(vocab_size=32064, num_hidden_layers=1))
    with torch.no_grad():
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        for dim, (token, following) in enumerate([(ASSISTANT, paris), (paris, bang), (bang, END)]):
            embed[token] = 0.0
            embed[token, dim] = 20.0  # after the norms: ~sqrt(hidden) in that one direction
            head[following, dim] = 50.0  # its logit ~50x that; the others' ~0.02x
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(phi3_dir / name, ckpt / name)
    out = tmp_path / "b"
    assert edgesmith("compile", ckpt, "--quant", "q4f32", "-o", out, "-q").returncode == 0
    p = edgesmith("run", out, "--prompt", "Hello", "--chat", "-n", "8", "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["prompt_ids"] == [BOS, USER, HELLO, END, ASSISTANT]
    assert r["output_ids"] == [paris, bang, END] and r["stop_reason"] == "stop", r
    streamed = edgesmith("run", out, "--prompt", "Hello", "--chat", "-n", "8")
    assert streamed.returncode == 0 and streamed.stdout == hf_tok.decode([paris, bang]) + "\n", streamed.stdout
    on = json.loads(edgesmith("run", out, "--prompt", "Hello", "--chat", "-n", "8", "--json", "--ignore-eos").stdout)
    assert on["output_ids"][:3] == [paris, bang, END] and len(on["output_ids"]) == 8, on
