"""Text in and out: the checkpoint's tokenizer.json (through `tokenizers`) and streamed decoding."""
from __future__ import annotations

from pathlib import Path

from edgesmith.errors import EdgesmithError


class Tokenizer:
    def __init__(self, path: Path):
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError:
            raise EdgesmithError("the bundle has a tokenizer.json but the `tokenizers` package is missing; "
                                 "pip install tokenizers (or pass --tokens)") from None
        self._tok = HFTokenizer.from_file(str(path))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)


def load_tokenizer(bundle: Path) -> Tokenizer | None:
    path = Path(bundle) / "tokenizer.json"
    return Tokenizer(path) if path.is_file() else None


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
