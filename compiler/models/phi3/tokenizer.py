"""The real Phi-3 tokenizer, made once from a package of the registry (no model hub).

llama-cpp-python's source distribution vendors llama.cpp's tokenizer test data: the Phi-3
vocabulary `ggml-vocab-phi-3.gguf` (32064 pieces with their scores and types, the chat tokens,
the chat template) and beside it `.inp` (test texts) / `.out` (the ids llama.cpp encodes them to).
`edgesmith tokenizer fetch` (and scripts/install.sh) downloads that sdist with pip, extracts those
three files, converts the vocabulary into a Hugging Face `tokenizers` tokenizer.json, checks every
test case, and keeps it all in CACHE/tokenizers/phi-3/. Nothing here ever runs at `run` time: a
bundle made from a `random:` preset with the Phi-3 vocabulary carries the tokenizer.json.

The conversion (the vocabulary is SentencePiece BPE; llama.cpp runs it as its "SPM" tokenizer):
- text: " " -> "▁" and one "▁" in front (normalizer Prepend + Replace; the tokenizers library
  normalizes each stretch between two added tokens on its own, as llama.cpp prefixes a space
  after every special token);
- model: BPE over the characters, where two neighbours merge when their concatenation is a piece,
  the highest-scoring such piece first (leftmost on a tie). BPE does exactly that with one merge
  rule (left, right) for every way of cutting a normal piece into two pieces, ranked by the
  piece's score; characters that are no piece become their UTF-8 bytes (<0x..> pieces: byte_fallback);
- added tokens: the control pieces (<s>, <|user|>, <|end|>, ...) are matched before anything
  else; as llama.cpp does for Phi-3, each chat token swallows the whitespace after it (rstrip),
  except <unk>, <s> and <|endoftext|>; [PAD.....] fillers up to the model's 32064 rows are special;
- post-processor: <s> in front (the vocabulary's add_bos_token); decoder: "▁" -> " ", bytes
  fused back into UTF-8, the one leading space removed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from edgesmith.errors import EdgesmithError

PACKAGE, VERSION = "llama-cpp-python", "0.3.36"
MEMBER_DIR = "vendor/llama.cpp/models/"
GGUF = "ggml-vocab-phi-3.gguf"
FILES = (GGUF, GGUF + ".inp", GGUF + ".out")
VOCAB_SIZE = 32064  # Phi-3 mini/medium/3.5: 32000 SentencePiece pieces, 11 chat tokens, padding rows
FETCH_COMMAND = "edgesmith tokenizer fetch"
TEST_SEPARATOR = "\n__ggml_vocab_test__\n"

# gguf token types (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# llama.cpp gives Phi-3's special tokens rstrip, except these (llama-vocab.cpp, "phi-3" model names).
NO_RSTRIP = ("<unk>", "<s>", "<|endoftext|>")


def cache_dir() -> Path:
    from edgesmith.targets.cache import cache_root

    return cache_root() / "tokenizers" / "phi-3"


def cached() -> Path | None:
    """The folder holding the built tokenizer (tokenizer.json, tokenizer_config.json, source.json
    and the test files), or None when `edgesmith tokenizer fetch` has not made it."""
    folder = cache_dir()
    ok = all((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "source.json", *FILES))
    return folder if ok else None


def missing_message(what: str) -> str:
    return (f"{what} needs the Phi-3 tokenizer, which is not built on this machine (no {cache_dir()}); "
            f"make it once with `{FETCH_COMMAND}` (downloads {PACKAGE} {VERSION}'s source from the "
            "package registry)")


def for_random(config, preset: str):
    """(folder or None, TokenizerInfo) for a `random:` preset: presets with Phi-3's 32064-token
    vocabulary carry the tokenizer `edgesmith tokenizer fetch` built (none is made here); others
    say why they have none."""
    from edgesmith.compiler.bundle.manifest import TokenizerInfo

    if config.vocab_size != VOCAB_SIZE:
        why = (f"random:{preset} has Phi-4-mini's {config.vocab_size}-token vocabulary, not Phi-3's; no "
               "tokenizer for it is attached" if preset.startswith("phi-4") else
               f"random:{preset} has a {config.vocab_size}-token toy vocabulary, no real tokenizer")
        return None, TokenizerInfo(note=why)
    folder = cached()
    if folder is None:
        return None, TokenizerInfo(vocabulary="phi-3", note=missing_message(f"random:{preset}'s text"))
    return attach()


def fits(config) -> bool:
    """Whether a model of `config` has Phi-3's vocabulary (its embedding rows)."""
    return config.vocab_size == VOCAB_SIZE


def vocab_size() -> int:
    return VOCAB_SIZE


def attach():
    """(folder, TokenizerInfo) of the built tokenizer, for a bundle to carry (--tokenizer phi3,
    `edgesmith tokenizer add BUNDLE phi3`, random: presets); an error naming the fetch when it is
    not built here."""
    from edgesmith.compiler.bundle.manifest import TokenizerInfo

    folder = cached()
    if folder is None:
        raise EdgesmithError(missing_message("--tokenizer phi3"))
    source = json.loads((folder / "source.json").read_text())
    return folder, TokenizerInfo(source="phi-3 vocabulary", vocabulary="phi-3",
                                 origin=f"{source['package']} {source['member'].split('/', 1)[-1]}",
                                 gguf_sha256=source["gguf_sha256"])


def describe(info) -> str:
    """`edgesmith inspect`'s line for a bundle that carries it (its TokenizerInfo)."""
    return f"built Phi-3 vocabulary ({VOCAB_SIZE} tokens, from {info.origin})"


def summary(folder: Path) -> str:
    """`edgesmith tokenizer show`: where it is and what it was made from."""
    source = json.loads((folder / "source.json").read_text())
    return (f"Phi-3 tokenizer in {folder}: {source['vocab_size']} tokens from {source['package']} "
            f"({source['member']}), {source['test_cases']} of llama.cpp's test cases checked")


# ------------------------------------------------------------------ fetch (download + extract)

def fetch(*, say: Callable[[str], None] = lambda msg: None, force: bool = False) -> Path:
    """Download the sdist, extract the vocabulary and its tests, convert, check, store. Returns the
    cache folder (at once, with nothing downloaded, when it is already there and force is off)."""
    if not force and cached() is not None:
        say(f"the Phi-3 tokenizer is already built in {cache_dir()} (--force makes it again)")
        return cache_dir()
    dest = cache_dir()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".phi-3-", dir=dest.parent) as tmp:
        tmp = Path(tmp)
        say(f"downloading {PACKAGE} {VERSION}'s source distribution (77 MB) from the package registry with pip")
        sdist = _pip_download(tmp / "download", say)
        say(f"extracting {', '.join(FILES)} from {sdist.name}")
        out = tmp / "phi-3"
        out.mkdir()
        member = _extract(sdist, out)
        say("converting the vocabulary into tokenizer.json")
        convert(out / GGUF, out)
        passed = check_cases(out)
        (out / "source.json").write_text(json.dumps({
            "package": f"{PACKAGE}=={VERSION}", "sdist": sdist.name, "sdist_sha256": _sha256(sdist),
            "member": member, "gguf_sha256": _sha256(out / GGUF), "vocab_size": VOCAB_SIZE,
            "test_cases": passed}, indent=1) + "\n")
        old = dest.with_name(f".phi-3.old-{os.getpid()}")
        if dest.exists():
            os.rename(dest, old)
        os.rename(out, dest)
        shutil.rmtree(old, ignore_errors=True)
    say(f"Phi-3 tokenizer ready in {dest}: all {passed} of llama.cpp's test cases encode to its ids")
    return dest


def _pip_download(where: Path, say: Callable[[str], None]) -> Path:
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            "--disable-pip-version-check", f"{PACKAGE}=={VERSION}", "-d", str(where)]
    if sys.stderr.isatty():  # pip draws its own progress bar on the terminal
        code, tail = subprocess.call(argv, stdout=sys.stderr), ["(pip's messages are above)"]
    else:  # in a log: pip's lines as they come
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tail = []
        for line in proc.stdout:
            line = line.rstrip()
            if line and "is ignored: it is neither a file nor a directory" not in line:
                say(f"  pip: {line}")
                tail = (tail + [line])[-3:]
        code = proc.wait()
    found = sorted(where.glob("*.tar.gz")) if where.is_dir() else []
    if code != 0 or not found:
        last = next((l for l in reversed(tail) if "error" in l.lower()), tail[-1] if tail else "no output")
        raise EdgesmithError(f"pip could not download {PACKAGE}=={VERSION} (exit code {code}: {last.strip()}); "
                             "this needs the package registry once (pip config list shows which), then "
                             f"run `{FETCH_COMMAND}` again")
    return found[0]


def _extract(sdist: Path, out: Path) -> str:
    """Copy the three files out of the sdist (read as data: no member is extracted by its own path)."""
    got: dict[str, str] = {}
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for info in tar:
                base = info.name.rsplit("/", 1)[-1]
                if info.isfile() and base in FILES and info.name.endswith(MEMBER_DIR + base) and base not in got:
                    with tar.extractfile(info) as src, open(out / base, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    got[base] = info.name
    except (tarfile.TarError, OSError, EOFError) as err:
        raise EdgesmithError(f"{sdist.name} is not a readable source archive ({err}); run `{FETCH_COMMAND} "
                             "--force` to download it again") from None
    missing = [f for f in FILES if f not in got]
    if missing:
        raise EdgesmithError(f"{sdist.name} has no {MEMBER_DIR}{missing[0]}; the package layout changed — "
                             f"edgesmith expects {PACKAGE} {VERSION}")
    return got[GGUF]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ convert (gguf -> tokenizer.json)

def read_vocab(gguf_path: Path) -> dict:
    """The gguf's tokenizer fields: pieces, scores, types, special ids, chat template."""
    try:
        from gguf import GGUFReader, GGUFValueType
    except ImportError:
        raise EdgesmithError("the `gguf` package is missing; pip install gguf (it is in edgesmith's "
                             "dependencies: reinstall edgesmith)") from None
    fields = GGUFReader(str(gguf_path)).fields

    def value(key, default=None):
        # ReaderField: `parts` are the raw numpy pieces of the record, `data` indexes the value
        # parts (one per array element); the layout every gguf release reads the same way.
        if key not in fields:
            return default
        field = fields[key]
        kind = field.types[-1]
        items = [bytes(field.parts[i]).decode("utf-8") if kind == GGUFValueType.STRING else field.parts[i].tolist()[0]
                 for i in field.data]
        return items if field.types[0] == GGUFValueType.ARRAY else items[0]

    vocab = {"model": value("tokenizer.ggml.model"), "tokens": value("tokenizer.ggml.tokens"),
             "scores": value("tokenizer.ggml.scores"), "types": value("tokenizer.ggml.token_type"),
             "bos": value("tokenizer.ggml.bos_token_id"), "eos": value("tokenizer.ggml.eos_token_id"),
             "unk": value("tokenizer.ggml.unknown_token_id", 0), "pad": value("tokenizer.ggml.padding_token_id"),
             "add_bos": bool(value("tokenizer.ggml.add_bos_token", True)),
             "chat_template": value("tokenizer.chat_template")}
    if vocab["model"] != "llama" or not vocab["tokens"] or len(vocab["tokens"]) != VOCAB_SIZE:
        raise EdgesmithError(f"{gguf_path} is not the {VOCAB_SIZE}-piece SentencePiece vocabulary of Phi-3 "
                             f"(model {vocab['model']!r}, {len(vocab['tokens'] or [])} pieces)")
    return vocab


def convert(gguf_path: Path, out: Path) -> None:
    """Write out/tokenizer.json and out/tokenizer_config.json (bos/eos, chat template): the
    SentencePiece conversion of compiler/models/spm.py with llama.cpp's Phi-3 rule that each chat
    token swallows the whitespace after it (except <unk>, <s> and <|endoftext|>)."""
    from edgesmith.compiler.models import spm

    v = read_vocab(gguf_path)
    tok = spm.build(v, rstrip=lambda piece: piece not in NO_RSTRIP)
    got = tok.get_vocab_size(with_added_tokens=True)
    if got != VOCAB_SIZE:
        raise EdgesmithError(f"the converted tokenizer has {got} tokens, expected {VOCAB_SIZE}")
    spm.write(v, out, rstrip=lambda piece: piece not in NO_RSTRIP,
              edgesmith_source=f"{PACKAGE} {VERSION} {MEMBER_DIR}{GGUF}")


# ------------------------------------------------------------------ llama.cpp's test cases

def read_cases(folder: Path) -> list[tuple[str, list[int]]]:
    """(text, ids) pairs of the .inp/.out files, split as llama.cpp's test-tokenizer-0 splits them."""
    raw = (folder / (GGUF + ".inp")).read_bytes().decode("utf-8")
    texts = []
    pos = 0
    while pos < len(raw):
        nxt = raw.find(TEST_SEPARATOR, pos)
        if nxt < 0:
            texts.append(raw[pos:])
            break
        texts.append(raw[pos:nxt])
        pos = nxt + len(TEST_SEPARATOR)
    ids = [[int(x) for x in line.split()] for line in (folder / (GGUF + ".out")).read_text().split("\n")[:len(texts)]]
    if len(ids) != len(texts):
        raise EdgesmithError(f"{folder}: {len(texts)} test texts but {len(ids)} id lines")
    return list(zip(texts, ids))


def check_cases(folder: Path) -> int:
    """Every case encodes (no <s>) to llama.cpp's ids and decodes back to its text; returns the count."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    cases = read_cases(folder)
    for text, want in cases:
        got = tok.encode(text, add_special_tokens=False).ids
        if got != want:
            raise EdgesmithError(f"the converted Phi-3 tokenizer encodes {text[:40]!r} to {got[:12]}, llama.cpp to "
                                 f"{want[:12]}; the conversion is wrong — please report it")
        back = tok.decode(got, skip_special_tokens=False)
        if back != text:
            raise EdgesmithError(f"the converted Phi-3 tokenizer decodes {text[:40]!r} back as {back[:40]!r}")
    return len(cases)
