"""`edgesmith run BUNDLE --interactive`: the chat, as llama-cli, ollama and `mlc_llm chat` behave.

On a terminal: line editing and history (prompt_toolkit), a banner naming the model, the device
and the context, Ctrl-C stops the reply being generated and keeps the conversation (at the prompt
it clears the line), Ctrl-D or /bye leaves, /clear starts again on an empty KV cache, /stats.
Piped input: one turn a line, echoed, so a piped conversation reads as one. Replies stream on
stdout, everything else goes to stderr. The same on every device: the runner keeps the
conversation (runtime/runner_chat.py), the context policy is runtime/chat.py's.
"""
from __future__ import annotations

import json
import signal
import sys

from edgesmith.errors import EdgesmithError

HELP = [("/help", "this list"), ("/clear", "start again on an empty KV cache (the system prompt stays); /reset too"),
        ("/stats", "the conversation's tokens and the last turn's speeds"), ("/bye", "leave (Ctrl-D too)")]
COMMANDS = ("/help", "/?", "/clear", "/reset", "/stats", "/bye", "/exit", "/quit")


def default_reply_tokens(limit: int) -> int:
    """A reply's tokens at most when -n is not given: 256, or half the context if that is less."""
    return max(1, min(256, limit // 2))


class LineReader:
    """The person's lines: prompt_toolkit's editor (arrows, history, Ctrl-A/E, ...) on a terminal,
    plain lines from a pipe. read() returns a line, or None at the end (Ctrl-D, end of input);
    a Ctrl-C at the prompt raises KeyboardInterrupt."""

    def __init__(self, echo: bool):
        self.tty = sys.stdin.isatty() and sys.stdout.isatty()
        self.echo = echo and not self.tty
        self.session = None
        if self.tty:
            from prompt_toolkit import PromptSession
            from prompt_toolkit.history import FileHistory, InMemoryHistory

            history = InMemoryHistory()
            try:
                from edgesmith.targets.cache import cache_root

                path = cache_root() / "chat-history"
                path.parent.mkdir(parents=True, exist_ok=True)
                history = FileHistory(str(path))
            except OSError:
                pass  # a read-only home: history for this chat only
            self.session = PromptSession(history=history)

    def read(self) -> str | None:
        if self.session is not None:
            try:
                return self.session.prompt("> ")
            except EOFError:
                return None
        line = sys.stdin.readline()
        if not line:
            return None
        line = line.rstrip("\n").rstrip("\r")
        if self.echo:
            print(f"> {line}", flush=True)
        return line


class Chat:
    def __init__(self, args, manifest, tok, conversation, stops: set[int], runner_chat, limit: int, where: str):
        from edgesmith.runtime.text import Detokenizer

        self.args, self.manifest, self.tok, self.conv, self.stops = args, manifest, tok, conversation, stops
        self.runner, self.limit, self.where = runner_chat, limit, where
        self.n = args.max_new_tokens
        self.turns: list[dict] = []
        self.Detokenizer = Detokenizer

    # ---------------------------------------------------------------- the loop

    def banner(self) -> None:
        m = self.manifest
        system = ""
        if self.conv.system:
            system = " · system prompt " + ("set" if self.conv.system_role else
                                            "set (the template has no system role: it goes before the first message)")
        say(f"edgesmith chat · {m.model.source} · {m.quant} · {self.where} · context {self.limit} tokens, "
            f"replies up to {self.n} tokens{system}")
        say("/help lists the commands · Ctrl-C stops a reply · Ctrl-D or /bye leaves")

    def loop(self, first=None) -> None:
        reader = LineReader(echo=not self.args.json)
        if first is not None:
            self.turn(first)
        while True:
            try:
                line = reader.read()
            except KeyboardInterrupt:  # at the prompt: the line is dropped, the chat goes on
                say("(Ctrl-D or /bye leaves)")
                continue
            if line is None:
                break
            if not line.strip():
                continue
            if line.strip().startswith("/"):  # never token ids
                if self.command(line.strip()):
                    break
                continue
            user = line if self.tok is not None else _ids(line)
            if user is not None:
                self.turn(user)

    def command(self, line: str) -> bool:
        """Run a /command; True to leave."""
        word = line.split()[0].lower()
        if word in ("/bye", "/exit", "/quit"):
            return True
        if word in ("/help", "/?"):
            for name, what in HELP:
                say(f"  {name:7s} {what}")
        elif word in ("/clear", "/reset"):
            self.runner.reset()
            self.conv.clear()
            say("[conversation cleared: the KV cache is empty" + (", the system prompt stays]" if self.conv.system
                                                                   else "]"))
        elif word == "/stats":
            say(self.stats())
        else:
            from edgesmith.errors import unknown_name

            say(unknown_name("command", word, [c for c, _ in HELP]).replace("known:", "commands:"))
        return False

    def stats(self) -> str:
        used = self.conv.cached
        lines = [f"turns {len(self.turns)} · context {used} of {self.limit} tokens ({100 * used / self.limit:.0f}%) · "
                 f"{self.where} · model loaded in {self.runner.load_s or 0:.1f} s"]
        if self.turns:
            r = self.turns[-1]
            lines.append(f"last turn: prompt {r['prompt_tokens']} tokens at {r.get('prefill_tok_s') or 0:.1f} tok/s, "
                         f"{len(r['output_ids'])} tokens at {r.get('decode_tok_s') or 0:.1f} tok/s "
                         f"({r['stop_reason']})" + (f", peak RSS {r['peak_rss_kb'] / 1024:.0f} MiB"
                                                     if r.get("peak_rss_kb") else ""))
            gen = sum(len(t["output_ids"]) for t in self.turns)
            lines.append(f"all turns: {sum(t['prompt_tokens'] for t in self.turns)} prompt tokens, {gen} generated")
        return "\n".join(lines)

    # ---------------------------------------------------------------- one turn

    def turn(self, user) -> None:
        from edgesmith.runtime.chat import ContextFull

        try:
            plan = self.conv.plan(user, limit=self.limit, n=self.n, policy=self.args.context_policy)
        except ContextFull as err:  # this turn alone is too long: say so, the conversation goes on
            say(f"edgesmith: {err}")
            return
        if plan.reset and plan.dropped_tokens:
            kept = len(self.conv.exchanges) - plan.dropped
            say(f"[context full: dropped the oldest {plan.dropped} turn{'s' * (plan.dropped != 1)}"
                f"{' (the system prompt stays)' if self.conv.system else ''}; {kept} kept and the new one are read "
                f"again: {len(plan.ids)} tokens on an empty KV cache]")
        stream = None if self.args.json else self.Detokenizer(self.tok, sys.stdout)
        self.runner.send(plan.ids, on_token=stream.token if stream else None, reset=plan.reset)
        self.conv.commit(plan, user)
        record = self._wait()
        text = self.conv.assistant(record["output_ids"], self.stops, record["context_tokens"])
        record = dict(record, prompt_ids=plan.ids, **({"text": text} if self.tok is not None else {}))
        self.turns.append(record)
        if self.args.json:
            print(json.dumps(record), flush=True)
            return
        stream.finish()
        cancelled = " · stopped (Ctrl-C)" if record["stop_reason"] == "cancelled" else ""
        say(f"[turn {len(self.turns)}: {record['prompt_tokens']} prompt tokens at {record.get('prefill_tok_s') or 0:.1f} "
            f"tok/s, {len(record['output_ids'])} generated at {record.get('decode_tok_s') or 0:.1f} tok/s, "
            f"{record['context_tokens']} in context{cancelled}]")

    def _wait(self) -> dict:
        """The turn's record; a Ctrl-C meanwhile stops the reply (the runner ends it at its next
        token) and the conversation goes on."""
        while True:
            try:
                return self.runner.wait()
            except KeyboardInterrupt:
                self.runner.cancel()


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _ids(line: str) -> list[int] | None:
    try:
        ids = [int(x) for x in line.replace(" ", "").split(",") if x]
    except ValueError:
        ids = []
    if not ids or any(i < 0 for i in ids):
        say(f"edgesmith: this bundle has no tokenizer: type token ids separated by commas, got {line!r}")
        return None
    return ids


def run_chat(args, manifest, tok, stops: set[int], runner_args: list[str], first=None) -> int:
    """The conversation, start to end, on the device args.device names (None: here)."""
    from edgesmith.cli.progress import Spinner
    from edgesmith.runtime.chat import Conversation
    from edgesmith.runtime.runner_chat import RunnerChat
    from edgesmith.runtime.session import RunnerSession

    device = None
    if args.device:
        from edgesmith.runtime.devices import get_device

        device = get_device(args.device, args.devices)
    conversation = Conversation(tok, str(args.bundle), system=args.system)
    limit = args.context or manifest.kv_cache.max_total_seq_len
    if args.max_new_tokens >= limit:
        raise EdgesmithError(f"-n {args.max_new_tokens} leaves no room in the context of {limit} tokens for what you "
                             f"type; ask for fewer new tokens (e.g. -n {default_reply_tokens(limit)})")
    spinner = Spinner()
    session = RunnerSession(args.bundle, device, timeout=args.timeout)
    name = device.name if device else "this machine"
    spinner.set(f"pushing the bundle to {name}" if device else "starting the runner")
    # A Ctrl-C is the chat's own from here (stop a reply, clear a line): not the CLI's exit 130.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler) if _main_thread() else None
    try:
        with session:
            spinner.set(f"loading the model on {name}")
            runner = RunnerChat(session, runner_args)
            try:
                runner.start()
            finally:
                spinner.clear()
            emulated = ", emulated: qemu" if session.emulated else ""
            where = f"on {device.name if device else 'host'} ({manifest.arch}{emulated})"
            chat = Chat(args, manifest, tok, conversation, stops, runner, limit, where)
            if not args.json:
                chat.banner()
            try:
                chat.loop(first)
            finally:
                runner.close()
    finally:
        spinner.clear()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return 0


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
