"""Text in and out: a bundle's tokenizer (tokenizer.json through `tokenizers`, and what
tokenizer_config.json says of it: bos/eos, chat template) and streamed decoding.

Where a bundle's tokenizer comes from (compile decides, the manifest's "tokenizer" records it):
- a checkpoint folder's own tokenizer.json (+ tokenizer_config.json, chat_template.jinja), as is;
- a `random:` preset with the Phi-3 vocabulary: the Phi-3 tokenizer `edgesmith tokenizer fetch`
  built (its architecture's tokenizer builder: compiler/models/phi3/tokenizer.py). A bundle compiled
  before it was built finds it in the cache at run time (nothing is ever downloaded at run time);
- none (random:tiny's toy vocabulary, Phi-4-mini's other one): token ids only.
"""
from __future__ import annotations

import json
from pathlib import Path

from edgesmith.compiler.bundle.manifest import TokenizerInfo
from edgesmith.compiler.models import tokenizer_builder
from edgesmith.errors import EdgesmithError

FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


class Tokenizer:
    def __init__(self, folder: Path, origin: str):
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError:
            raise EdgesmithError("the bundle has a tokenizer.json but the `tokenizers` package is missing; "
                                 "pip install tokenizers (or pass --tokens)") from None
        folder = Path(folder)
        self.origin = origin
        self._tok = HFTokenizer.from_file(str(folder / "tokenizer.json"))
        config = _read_json(folder / "tokenizer_config.json")
        self.chat_template = _chat_template(folder, config)
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))
        added = self._tok.get_added_tokens_decoder()
        self.special_ids = {i for i, t in added.items() if t.special}

    def encode(self, text: str, special: bool = True) -> list[int]:
        """Ids of `text`; special=True adds what the tokenizer adds around a text (e.g. <s>)."""
        return self._tok.encode(text, add_special_tokens=special).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def token_id(self, text: str | None) -> int | None:
        return self._tok.token_to_id(text) if text else None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EdgesmithError(f"{path} is not valid JSON ({err}); copy it from the checkpoint again") from None
    return data if isinstance(data, dict) else {}


def _token_text(value) -> str | None:
    """tokenizer_config.json writes a token as "<s>" or as {"content": "<s>", ...}."""
    return value.get("content") if isinstance(value, dict) else value


def _chat_template(folder: Path, config: dict) -> str | None:
    """chat_template.jinja (newer transformers) or tokenizer_config.json's chat_template: a string,
    or a list of {"name", "template"} where "default" is the chat one."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template else None


def load_tokenizer(bundle: Path, manifest=None) -> Tokenizer | None:
    """The bundle's tokenizer; for a `random:` Phi-3 bundle compiled before the tokenizer was
    built, the one in the cache; else None."""
    bundle = Path(bundle)
    if (bundle / "tokenizer.json").is_file():
        if manifest is not None:  # what the manifest lists is what the runner will accept: checked before use
            from edgesmith.compiler.bundle.folder import verify

            verify(bundle, manifest, only=[name for name in FILES if name in manifest.files])
        return Tokenizer(bundle, "bundle")
    entry = manifest.tokenizer if manifest is not None else None
    builder = tokenizer_builder(entry.vocabulary) if entry is not None and entry.vocabulary else None
    if builder is not None:
        folder = builder.cached()
        if folder is not None:
            return Tokenizer(folder, str(folder))
    return None


def no_tokenizer_message(bundle: Path, manifest, want: str = "--prompt") -> str:
    """Why `bundle` has no tokenizer, and what to do: one line."""
    entry = manifest.tokenizer or TokenizerInfo()
    builder = tokenizer_builder(entry.vocabulary) if entry.vocabulary else None
    if builder is not None:
        return builder.missing_message(f"{want} on {bundle} ({manifest.model.source})") + \
            "; or pass token ids with --tokens 1,2,3"
    why = entry.note or "random weights, or none in the checkpoint"
    return f"bundle {bundle} has no tokenizer.json ({why}); pass token ids with --tokens 1,2,3"


class Detokenizer:
    """Prints text as tokens arrive: decodes the whole output each time and prints what is new,
    so multi-token characters and word-piece spacing come out right. Without a tokenizer it prints ids."""

    def __init__(self, tokenizer: Tokenizer | None, out):
        self.tok, self.out = tokenizer, out
        self.ids: list[int] = []
        self.printed = ""

    def token(self, tok: int) -> None:
        self.ids.append(tok)
        if self.tok is None:
            self.out.write(("" if len(self.ids) == 1 else " ") + str(tok))
        else:
            text = self.tok.decode(self.ids)
            if text.startswith(self.printed) and not text.endswith("\ufffd"):
                self.out.write(text[len(self.printed):])
                self.printed = text
        self.out.flush()

    def finish(self) -> None:
        if self.tok is not None:
            text = self.tok.decode(self.ids)
            if text.startswith(self.printed):
                self.out.write(text[len(self.printed):])
        self.out.write("\n")
        self.out.flush()
