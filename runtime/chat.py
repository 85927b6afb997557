"""Chat on a bundle: the tokenizer's chat template turned into each turn's token ids, a system
prompt, and what to do when the conversation outgrows the context.

The template is Jinja, rendered as transformers renders it (sandboxed, trim_blocks,
lstrip_blocks; bos_token, eos_token, add_generation_prompt). Phi-3's (the one the built Phi-3
vocabulary carries) gives `<s><|user|>\\nHello<|end|>\\n<|assistant|>\\n`, which Phi-3's tokenizer
encodes as [1, 32010, 15043, 32007, 32001]: each chat token swallows the newline after it.

Turn k > 1 feeds only what is new: the conversation is rendered again with the new user message,
and what follows the text already in the cache (previous prompt + decoded reply) is encoded,
led by the reply's last token — sampled, never fed (usually `<|end|>`, which the template also
writes after the reply, so it is fed once).

When a turn would not fit (tokens in the cache + the turn + the reply's -n > the context), the
policy `drop` drops the oldest exchanges (the system prompt stays) and the rest is rendered from
its start into a new sequence (the runner's "reset"); `stop` refuses the turn, as a bare runner
does. The runner's side of a conversation is runtime/runner_chat.py.
"""
from __future__ import annotations

from dataclasses import dataclass

from edgesmith.errors import EdgesmithError
from edgesmith.runtime.text import Tokenizer

POLICIES = ("drop", "stop")


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


@dataclass
class TurnPlan:
    """What to send the runner for one user turn."""
    ids: list[int]
    reset: bool = False  # a new sequence first: the ids hold the whole (kept) conversation
    dropped: int = 0  # exchanges dropped to make room
    dropped_tokens: int = 0  # tokens the cache held before (all of them leave it on a reset)


class Conversation:
    """The messages so far and the token ids each new user turn adds to the runner's cache.
    Without a tokenizer (tok None) the turns are token ids, concatenated."""

    def __init__(self, tok: Tokenizer | None, bundle: str = "the bundle", system: str | None = None):
        if tok is not None and not tok.chat_template:
            raise EdgesmithError(f"{bundle}'s tokenizer has no chat template (its tokenizer_config.json has no "
                                 "chat_template); use --prompt without --chat, or --tokens")
        if tok is None and system:
            raise EdgesmithError(f"{bundle} has no tokenizer, so it has no chat format for --system; drop --system")
        self.tok = tok
        self.system = system or None
        # Templates without a system role (Phi-3-mini's) render nothing of it: it goes before the
        # first user message instead, so the model still reads it.
        self.system_role = bool(self.system) and self._renders_system()
        self.exchanges: list[list] = []  # [user text or ids, reply text or ids or None]
        self.fed = ""  # rendered text (or, without a tokenizer, ids) whose tokens are in the cache
        self.fed_ids: list[int] = []
        self.pending: int | None = None  # the last reply's last token: sampled, not fed
        self.cached = 0  # tokens in the runner's cache (its context_tokens)

    # ---------------------------------------------------------------- rendering

    def _renders_system(self) -> bool:
        marker = "\x00edgesmith-system\x00"
        text = self._render_raw([{"role": "system", "content": marker}, {"role": "user", "content": "hi"}], True)
        return marker in text

    def _render_raw(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return render(self.tok.chat_template, messages, add_generation_prompt=add_generation_prompt,
                      bos=self.tok.bos_token, eos=self.tok.eos_token)

    def messages(self, exchanges: list[list] | None = None, user: str | None = None) -> list[dict]:
        """The messages as the template gets them: the system prompt, the exchanges, a new user turn."""
        exchanges = self.exchanges if exchanges is None else exchanges
        out: list[dict] = []
        for u, reply in exchanges + ([[user, None]] if user is not None else []):
            out.append({"role": "user", "content": u})
            if reply is not None:
                out.append({"role": "assistant", "content": reply})
        if self.system and self.system_role:
            out.insert(0, {"role": "system", "content": self.system})
        elif self.system and out:
            out[0] = {"role": "user", "content": f"{self.system}\n\n{out[0]['content']}"}
        return out

    def _full(self, exchanges: list[list], user) -> tuple[list[int], str]:
        """The whole conversation from its start (a new sequence): ids and rendered text."""
        if self.tok is None:
            ids = [i for u, reply in exchanges for i in u + (reply or [])] + list(user)
            return ids, ""
        rendered = self._render_raw(self.messages(exchanges, user), True)
        return self.tok.encode(rendered, special=False), rendered

    def _next(self, user) -> tuple[list[int], str]:
        """Ids that extend the cache by `user`'s turn, and the rendered text it then holds."""
        if not self.exchanges:
            return self._full([], user)
        lead = [self.pending] if self.pending is not None else []
        if self.tok is None:
            return lead + list(user), ""
        rendered = self._render_raw(self.messages(user=user), True)
        if not rendered.startswith(self.fed):
            raise EdgesmithError("the chat template writes earlier turns differently once a new one is added; "
                                 "this conversation cannot go on on the same cache (start it again: /clear)")
        ids = self.tok.encode(rendered[len(self.fed):], special=False)
        if lead and ids[:1] != lead:
            ids = lead + ids
        return ids, rendered

    # ---------------------------------------------------------------- turns

    def plan(self, user, *, limit: int, n: int, policy: str = "drop") -> TurnPlan:
        """The ids for the user turn `user` (text, or ids without a tokenizer) such that the cache's
        tokens + the turn + n new tokens fit `limit`; see the module's docstring for the policy.
        Changes nothing: commit() does, once the runner took the turn."""
        ids, _ = self._next(user)
        if self.cached + len(ids) + n <= limit:
            return TurnPlan(ids, reset=False)
        what = (f"the conversation ({self.cached} tokens) + this turn ({len(ids)}) + up to {n} new tokens (-n) "
                f"exceed the context of {limit} tokens")
        if policy == "stop":
            raise EdgesmithError(f"{what}; /clear starts the conversation again, or leave out --context-policy stop "
                                 "to drop the oldest turns")
        for k in range(len(self.exchanges) + 1):
            full, _ = self._full(self.exchanges[k:], user)
            if len(full) + n <= limit:
                return TurnPlan(full, reset=True, dropped=k, dropped_tokens=self.cached)
        raise ContextFull(f"this message alone ({len(full)} tokens with the chat format"
                          f"{' and the system prompt' if self.system else ''}) + up to {n} new tokens (-n) exceed "
                          f"the context of {limit} tokens; shorten it, or ask for fewer new tokens with -n")

    def user(self, text) -> list[int]:
        """Ids that make the cache hold the conversation up to the assistant's next reply (no
        context check: a single prompt, or the caller checked)."""
        plan = TurnPlan(self._next(text)[0])
        self.commit(plan, text)
        return plan.ids

    def commit(self, plan: TurnPlan, user) -> None:
        """The runner took `plan` for the user turn `user`."""
        if plan.reset:
            del self.exchanges[:plan.dropped]
            self.cached = 0
        _, rendered = self._full(self.exchanges, user) if plan.reset else self._next(user)
        self.exchanges.append([user, None])
        if self.tok is not None:
            self.fed = rendered
        self.pending = None

    def assistant(self, output_ids: list[int], stop_ids: set[int], context_tokens: int | None = None) -> str:
        """Record the reply the runner generated (its stop token, if any, is not text); returns its
        text (ids shown as text without a tokenizer). context_tokens: the runner's count after it."""
        content = output_ids[:-1] if output_ids and output_ids[-1] in stop_ids else output_ids
        if self.tok is None:
            text = " ".join(map(str, content))
            self.exchanges[-1][1] = list(output_ids)
        else:
            text = self.tok.decode(content)
            self.exchanges[-1][1] = text
            self.fed += text
        self.pending = output_ids[-1] if output_ids else None
        if context_tokens is not None:
            self.cached = context_tokens
        return text

    def clear(self) -> None:
        """Start again (the system prompt stays); the runner's sequence is reset by the caller."""
        self.exchanges, self.fed, self.pending, self.cached = [], "", None, 0


class ContextFull(EdgesmithError):
    """One turn alone does not fit the context: the conversation goes on without it."""


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
