"""`edgesmith run`: a bundle's tokens from a prompt, a chat turn or a conversation, here or on a
device (the runner through runtime/session.py, or TVM's VM in this process with --engine python).
The conversation itself (--interactive) is edgesmith/cli/chat.py."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from edgesmith.cli.args import at_least, count, device_options, format_option, ids, top_p


def _inputs(args) -> None:
    """What to generate from: exactly one of --prompt, -f, --tokens, or a conversation; said in one
    line when missing or when two disagree."""
    from edgesmith.errors import UsageError

    given = [flag for flag, value in (("--prompt", args.prompt), ("--prompt-file", args.prompt_file),
                                      ("--tokens", args.tokens)) if value is not None]
    if len(given) > 1:
        raise UsageError(f"{given[0]} and {given[1]} both give the prompt; keep one")
    if not given and not args.interactive:
        raise UsageError(f"run {args.bundle}: say what to generate from: --prompt TEXT, --prompt-file FILE (-f), "
                         "--tokens 1,2,3, or --interactive for a conversation"
                         + (" (--chat puts --prompt in the chat template)" if args.chat else ""))
    if args.system is not None and not (args.chat or args.interactive):
        raise UsageError("--system is the chat's system prompt: add --chat or --interactive")
    if args.prompt_file is not None:
        from edgesmith.errors import EdgesmithError

        try:
            args.prompt = sys.stdin.read() if str(args.prompt_file) == "-" else Path(args.prompt_file).read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise EdgesmithError(f"--prompt-file {args.prompt_file}: cannot read it "
                                 f"({getattr(err, 'strerror', None) or err}); give a UTF-8 text file") from None
        args.prompt = args.prompt.rstrip("\n")
        if str(args.prompt_file) == "-" and args.interactive:
            raise UsageError("--prompt-file - reads stdin, which --interactive reads the conversation from; give a file")


def cmd_run(args) -> int:
    from edgesmith.compiler.bundle.folder import read_manifest
    from edgesmith.errors import UsageError

    if args.engine == "python" and args.device:
        raise UsageError(f"--engine python runs TVM's VM in this process and cannot run on device "
                         f"'{args.device}'; drop --engine python (the device runs the bundle's runner)")
    _inputs(args)
    if args.device:  # a mistyped device is said before anything is read or pushed
        from edgesmith.runtime.devices import get_device

        get_device(args.device, args.devices)
    from edgesmith.runtime.text import Detokenizer, load_tokenizer

    manifest = read_manifest(args.bundle)
    tok = load_tokenizer(args.bundle, manifest)
    stop = _stops(args, manifest, tok)
    if args.max_new_tokens is None:
        from edgesmith.cli.chat import default_reply_tokens

        limit = args.context or manifest.kv_cache.max_total_seq_len
        args.max_new_tokens = default_reply_tokens(limit) if args.interactive else 32
    if args.interactive:
        if args.engine == "python":
            raise UsageError("--interactive runs on the bundle's runner; drop --engine python")
        from edgesmith.cli.chat import run_chat

        first = args.tokens if args.tokens is not None else args.prompt
        return run_chat(args, manifest, tok, set(stop), _sampling_args(args, stop), first=first)
    if args.tokens is not None:
        prompt = args.tokens
    elif args.chat:
        from edgesmith.runtime.chat import Conversation

        prompt = Conversation(tok, str(args.bundle), system=args.system).user(args.prompt)
    else:
        prompt = tok.encode(args.prompt)
    _check_fits(args, manifest, len(prompt))
    stream = None if args.json else Detokenizer(tok, sys.stdout)
    if args.engine == "python" and not args.device:
        from edgesmith.runtime.engine import Engine
        from edgesmith.runtime.sampling import Sampler

        engine = Engine(args.bundle, context=args.context)
        result = engine.generate(prompt, args.max_new_tokens, Sampler(args.temperature, args.top_p, args.seed),
                                 stop, on_token=stream.token if stream else None).to_json()
    else:
        result, pushes = _generate_on_runner(args, prompt, stop, stream)
        if pushes and args.json:  # what reaching the device cost: files sent, and whether it waited for another push
            p = pushes[0]
            result["push"] = {"files_sent": len(p.sent), "bytes_sent": p.bytes_sent, "resumed": len(p.renamed),
                              "reused": len(p.reused), "waited": p.waited, "seconds": round(p.seconds, 3)}
    emulated = _is_emulated(args, manifest)
    if args.json:
        if tok is not None:
            result["text"] = tok.decode(result["output_ids"])
        print(json.dumps(dict(result, prompt_ids=prompt, device=args.device or "host", emulated=emulated)))
    else:
        stream.finish()
        _print_timings(result, emulated)
    return 0


def _generate_on_runner(args, prompt: list[int], stop, stream) -> tuple[dict, list]:
    """`runner generate`, with a status line on a terminal while nothing shows yet: the push, the
    model loading, the prefill (cleared by the first token)."""
    from edgesmith.cli.progress import Spinner

    name = args.device or "this machine"
    spinner = Spinner()
    pushes = []

    def on_push(report):
        pushes.append(report)
        spinner.set(f"loading the model on {name}")

    def on_line(record):
        if "loaded" in record:
            spinner.set(f"prefill of {len(prompt)} prompt tokens on {name}")
        elif "token" in record:
            if stream is not None:
                spinner.clear()
                stream.token(record["token"])
            else:
                spinner.set(f"decoding on {name}")

    spinner.set(f"connecting to {name} and pushing the bundle" if args.device else f"loading the model on {name}")
    runner_args = ["generate", "--tokens", ",".join(map(str, prompt)), *_sampling_args(args, stop), "--stream"]
    try:
        lines = _run_runner(args, runner_args, on_line=on_line, on_push=on_push)
    finally:
        spinner.clear()
    return [d for d in lines if "output_ids" in d][-1], pushes


def _check_fits(args, manifest, prompt_tokens: int) -> None:
    """The prompt and -n within the context, said here with advice that can work (the runner would
    refuse it too, after the push and the load)."""
    from edgesmith.errors import EdgesmithError

    compiled = manifest.kv_cache.max_total_seq_len
    limit = args.context or compiled
    if prompt_tokens + args.max_new_tokens <= limit:
        return
    room = limit - prompt_tokens
    advice = f"ask for at most {room} new tokens (-n {room})" if room > 0 else "shorten the prompt"
    if args.context and args.context < compiled:
        advice += f", or a larger --context (up to the compiled {compiled})"
    elif room <= 0:
        advice += " (or recompile with a larger --context)"
    said = " (the compiled context)" if limit == compiled else f" (--context {limit})"
    raise EdgesmithError(f"the prompt ({prompt_tokens} tokens) + {args.max_new_tokens} new tokens exceed the context of "
                         f"{limit} tokens{said}; {advice}")


def _is_emulated(args, manifest) -> bool:
    """Whether the speeds come from qemu: the device that ran it says (this machine: the bundle's
    layout names qemu for a foreign-arch bundle)."""
    if args.device:
        from edgesmith.runtime.devices import get_device

        return get_device(args.device, args.devices).emulated
    from edgesmith.runtime.session import this_machine

    return this_machine(manifest).emulated


def _run_runner(args, runner_args: list[str], on_line=None, stdin=None, on_push=None) -> list[dict]:
    from edgesmith.runtime.session import run_bundle

    device = None
    if args.device:
        from edgesmith.runtime.devices import get_device

        device = get_device(args.device, args.devices)
    return run_bundle(device, Path(args.bundle), runner_args, timeout=args.timeout, on_line=on_line, stdin=stdin,
                      on_push=on_push)


def _stops(args, manifest, tok) -> tuple[int, ...]:
    """Stop ids: the model's eos; with --chat/--interactive and a tokenizer, also where the
    template ends a reply. Without a tokenizer, --prompt/--chat/--system say why there is none."""
    from edgesmith.errors import UsageError

    eos = tuple(manifest.config.eos_token_ids or ())
    if args.ignore_eos:
        return ()
    if tok is None:
        if args.prompt is not None or args.chat:
            from edgesmith.errors import EdgesmithError
            from edgesmith.runtime.text import no_tokenizer_message

            raise EdgesmithError(no_tokenizer_message(args.bundle, manifest, "--chat" if args.chat else "--prompt"))
        return eos
    if not (args.chat or args.interactive):
        return eos
    from edgesmith.runtime.chat import stop_ids

    if args.tokens is not None:
        raise UsageError("--chat and --interactive put text in the chat template: give the first turn with "
                         "--prompt, not --tokens")
    return tuple(sorted(stop_ids(tok, eos)))


def _sampling_args(args, stop) -> list[str]:
    out = ["-n", str(args.max_new_tokens), "--temperature", str(args.temperature), "--top-p", str(args.top_p),
           "--seed", str(args.seed)]
    if getattr(args, "context", None) is not None:
        out += ["--context", str(args.context)]
    return out + (["--stop-ids", ",".join(map(str, stop))] if stop else [])


def _print_timings(r: dict, emulated: bool) -> None:
    label = " (emulated: qemu, not the device's speed)" if emulated else ""
    parts = [f"prompt {r['prompt_tokens']} tokens: {r.get('prefill_tok_s') or 0:.1f} tok/s",
             f"generated {len(r['output_ids'])} tokens: {r.get('decode_tok_s') or 0:.1f} tok/s"]
    if r.get("peak_rss_kb"):
        parts.append(f"peak RSS {r['peak_rss_kb'] / 1024:.0f} MiB")
    print("\n[" + ", ".join(parts) + "]" + label, file=sys.stderr)


def add_parser(sub) -> None:
    from edgesmith.cli.chat import HELP
    from edgesmith.runtime.chat import POLICIES

    r = sub.add_parser("run", help="generate text or tokens with a bundle, or chat with it (--interactive)")
    r.add_argument("bundle", type=Path, help="a bundle folder (what `edgesmith compile -o` wrote)")
    source = r.add_argument_group("what to generate from (one of them)")
    source.add_argument("--prompt", help="text (the bundle's tokenizer: the checkpoint's, or for random: Phi-3 "
                        "presets the one `edgesmith tokenizer fetch` builds); with --interactive, the first turn")
    source.add_argument("-f", "--prompt-file", metavar="FILE", help="the prompt's text from a file (- : stdin)")
    source.add_argument("--tokens", type=ids, help="the prompt as token ids: 1,2,3")
    source.add_argument("--interactive", action="store_true", help="a conversation on one KV cache, as llama-cli "
                        "and ollama chat: line editing and history on a terminal, Ctrl-C stops a reply, "
                        f"Ctrl-D or /bye leaves, {', '.join(c for c, _ in HELP[1:3])}; piped, each line is a turn "
                        "(token ids 1,2,3 without a tokenizer). --timeout is per turn")
    r.add_argument("--chat", action="store_true", help="put --prompt in the chat template (Phi-3: <|user|> ... "
                   "<|end|> <|assistant|>) and stop at the end of the reply")
    r.add_argument("--system", metavar="TEXT", help="the chat's system prompt (--chat, --interactive); kept when "
                   "old turns are dropped")
    r.add_argument("--context-policy", choices=POLICIES, default="drop", help="when a conversation fills the context: "
                   "drop the oldest turns (the system prompt stays) and read the rest again, saying so (default), "
                   "or stop with an error")
    r.add_argument("-n", "--max-new-tokens", type=count, default=None, help="tokens to generate at most (default "
                   "32; in a conversation, per reply: 256, at most half the context)")
    r.add_argument("--temperature", type=at_least(0.0, float), default=0.0,
                   help="sampling temperature; 0 = greedy (default)")
    r.add_argument("--top-p", type=top_p, default=1.0,
                   help="sample from the smallest set of tokens whose probabilities add up to this (0-1, default 1)")
    r.add_argument("--seed", type=count, default=0, help="random seed for sampling (default 0)")
    r.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-text token")
    format_option(r, ("text", "json"), "json: one JSON object (output_ids, text, timings); with --interactive "
                  "one a turn")
    r.add_argument("--engine", choices=["runner", "python"], default="runner",
                   help="the bundle's C++ runner (default) or TVM's Python VM in this process")
    r.add_argument("--context", type=at_least(1), metavar="N", help="KV cache size in tokens, at most the compiled "
                   "context (default: the compiled context)")
    device_options(r)
    r.set_defaults(func=cmd_run)
