"""Chat on a bundle: the tokenizer's chat template turned into each turn's token ids, and a
conversation kept on one KV cache by the runner (`runner generate --interactive`).

The template is Jinja, rendered as transformers renders it (sandboxed, trim_blocks,
lstrip_blocks; bos_token, eos_token, add_generation_prompt). Phi-3's (the one the built Phi-3
vocabulary carries) gives `<s><|user|>\\nHello<|end|>\\n<|assistant|>\\n`, which Phi-3's tokenizer
encodes as [1, 32010, 15043, 32007, 32001]: each chat token swallows the newline after it.

Turn k > 1 feeds only what is new: the conversation is rendered again with the new user message,
and what follows the text already in the cache (previous prompt + decoded reply) is encoded,
led by the reply's last token — sampled, never fed (usually `<|end|>`, which the template also
writes after the reply, so it is fed once).
"""
from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterator

from edgesmith.errors import EdgesmithError
from edgesmith.runtime.text import Detokenizer, Tokenizer
from edgesmith.runtime.transports.base import StdinFeed


def render(template: str, messages: list[dict], *, add_generation_prompt: bool, bos: str | None,
           eos: str | None) -> str:
    try:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise EdgesmithError("chat templates need the `jinja2` package; pip install jinja2") from None

    def raise_exception(message):
        raise EdgesmithError(f"the chat template refuses this conversation: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                bos_token=bos or "", eos_token=eos or "")
    except TemplateError as err:
        raise EdgesmithError(f"the bundle's chat template does not render: {err}") from None


class Conversation:
    """The messages so far and the token ids each new user turn adds to the runner's cache."""

    def __init__(self, tok: Tokenizer, bundle: str = "the bundle"):
        if not tok.chat_template:
            raise EdgesmithError(f"{bundle}'s tokenizer has no chat template (its tokenizer_config.json has no "
                                 "chat_template); use --prompt without --chat, or --tokens")
        self.tok = tok
        self.messages: list[dict] = []
        self.fed = ""  # rendered text whose tokens are in the cache
        self.pending: int | None = None  # the last reply's last token: sampled, not fed

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return render(self.tok.chat_template, messages, add_generation_prompt=add_generation_prompt,
                      bos=self.tok.bos_token, eos=self.tok.eos_token)

    def user(self, text: str) -> list[int]:
        """Ids that make the cache hold the conversation up to the assistant's next reply."""
        messages = self.messages + [{"role": "user", "content": text}]
        rendered = self._render(messages, True)
        if not self.messages:
            ids = self.tok.encode(rendered, special=False)
        else:
            if not rendered.startswith(self.fed):
                raise EdgesmithError("the chat template writes earlier turns differently once a new one is added; "
                                     "this conversation cannot go on on the same cache (start it again)")
            ids = self.tok.encode(rendered[len(self.fed):], special=False)
            if self.pending is not None and ids[:1] != [self.pending]:
                ids = [self.pending] + ids
        self.messages, self.fed, self.pending = messages, rendered, None
        return ids

    def assistant(self, output_ids: list[int], stop_ids: set[int]) -> str:
        """Record the reply the runner generated (its stop token, if any, is not text); returns its text."""
        content = output_ids[:-1] if output_ids and output_ids[-1] in stop_ids else output_ids
        text = self.tok.decode(content)
        self.messages.append({"role": "assistant", "content": text})
        self.fed += text
        self.pending = output_ids[-1] if output_ids else None
        return text


def stop_ids(tok: Tokenizer, config_eos: list[int]) -> set[int]:
    """Where a chat reply ends: the model's eos ids, the tokenizer's eos, and the special token the
    template writes right after an assistant message (Phi-3: <|end|>)."""
    ids = set(config_eos)
    eos = tok.token_id(tok.eos_token)
    if eos is not None:
        ids.add(eos)
    if tok.chat_template:
        marker = "\x00edgesmith-reply\x00"
        text = render(tok.chat_template, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
                      add_generation_prompt=False, bos=tok.bos_token, eos=tok.eos_token)
        after = text.split(marker, 1)[1] if marker in text else ""
        closing = tok.encode(after, special=False)[:1] if after else []
        ids.update(i for i in closing if i in tok.special_ids)
    return ids


# ------------------------------------------------------------------ interactive session

class Interactive:
    """Drives `runner generate --interactive`: turns go in on the runner's stdin as the person types
    them, each after the previous reply ended; replies stream out as text (ids without a tokenizer).

    read() returns the next line typed, or None at the end (end of input, an empty line)."""

    def __init__(self, tok: Tokenizer | None, conversation: Conversation | None, stops: set[int],
                 read: Callable[[], str | None], *, first: list[int] | None = None, as_json: bool = False,
                 out=sys.stdout, err=sys.stderr):
        self.tok, self.conv, self.stops, self.read = tok, conversation, stops, read
        self.first, self.as_json, self.out, self.err = first, as_json, out, err
        self.turn_done = threading.Event()  # the runner is ready for the next turn
        self.ended = False
        self.sent: list[int] = []  # the current turn's ids
        self.last_output: int | None = None
        self.results: list[dict] = []
        self.stream: Detokenizer | None = None
        self.feed = StdinFeed(self._turns())

    def _ids(self, line: str) -> list[int] | None:
        if self.conv is not None:
            return self.conv.user(line)
        try:
            ids = [int(x) for x in line.replace(" ", "").split(",") if x]
        except ValueError:
            ids = []
        if not ids:
            print(f"edgesmith: this bundle has no tokenizer: type token ids separated by commas, got {line!r}",
                  file=self.err, flush=True)
            return None
        # ids continue the sequence: the last reply's last token (sampled, not fed) goes first
        return ([self.last_output] if self.last_output is not None else []) + ids

    def _turns(self) -> Iterator[bytes]:
        """The runner's stdin: one line of ids per turn, an empty line at the end."""
        pending = self.first
        while not self.ended:
            if not self.turn_done.wait(timeout=1.0):
                continue
            self.turn_done.clear()
            ids = pending
            while ids is None:
                with self.feed.idle():
                    line = self.read()
                if line is None or not line.strip():
                    yield b"\n"
                    return
                ids = self._ids(line)
            pending, self.sent = None, ids
            if not self.as_json:
                self.stream = Detokenizer(self.tok, self.out)
            yield (",".join(map(str, ids)) + "\n").encode()

    def close(self) -> None:
        """The runner ended: the feed stops waiting for it."""
        self.ended = True
        self.turn_done.set()

    def on_line(self, record: dict) -> None:
        if "ready" in record:
            self.turn_done.set()
        elif "token" in record:
            if self.stream is not None:
                self.stream.token(record["token"])
        elif "turn" in record:
            text = self.conv.assistant(record["output_ids"], self.stops) if self.conv else \
                (self.tok.decode(record["output_ids"]) if self.tok else None)
            record = dict(record, prompt_ids=self.sent, **({"text": text} if text is not None else {}))
            self.results.append(record)
            self.last_output = record["output_ids"][-1] if record["output_ids"] else None
            if self.as_json:
                print(json.dumps(record), file=self.out, flush=True)
            elif self.stream is not None:
                self.stream.finish()
                print(f"[turn {record['turn']}: {record['prompt_tokens']} prompt tokens at "
                      f"{record.get('prefill_tok_s') or 0:.1f} tok/s, {len(record['output_ids'])} generated at "
                      f"{record.get('decode_tok_s') or 0:.1f} tok/s, {record['context_tokens']} in context]",
                      file=self.err, flush=True)
            self.turn_done.set()
