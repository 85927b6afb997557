"""`edgesmith run`: a bundle's tokens from a prompt, a chat turn or a conversation, here or on a
device (the runner through runtime/session.py, or TVM's VM in this process with --engine python)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from edgesmith.cli.args import at_least, count, device_options, ids, top_p


def cmd_run(args) -> int:
    from edgesmith.compiler.bundle.folder import read_manifest
    from edgesmith.errors import EdgesmithError

    if args.engine == "python" and args.device:
        raise EdgesmithError(f"--engine python runs TVM's VM in this process and cannot run on device "
                             f"'{args.device}'; drop --engine python (the device runs the bundle's runner)")
    from edgesmith.runtime.text import Detokenizer, load_tokenizer

    manifest = read_manifest(args.bundle)
    tok = load_tokenizer(args.bundle, manifest)
    conversation, eos = _chat_setup(args, manifest, tok)
    if args.tokens is not None:
        prompt = args.tokens
    elif args.prompt is not None:
        prompt = conversation.user(args.prompt) if conversation else tok.encode(args.prompt)
    else:
        prompt = None if args.interactive else [manifest.config.bos_token_id or 1]
    stop = eos if not args.ignore_eos else ()
    if args.interactive:
        return _run_interactive(args, tok, conversation, stop, prompt)
    stream = None if args.json else Detokenizer(tok, sys.stdout)
    if args.engine == "python" and not args.device:
        from edgesmith.runtime.engine import Engine
        from edgesmith.runtime.sampling import Sampler

        engine = Engine(args.bundle, context=args.context)
        result = engine.generate(prompt, args.max_new_tokens, Sampler(args.temperature, args.top_p, args.seed),
                                 stop, on_token=stream.token if stream else None).to_json()
    else:
        runner_args = ["generate", "--tokens", ",".join(map(str, prompt)), *_sampling_args(args, stop)]
        if stream:
            runner_args.append("--stream")
        pushes = []
        lines = _run_runner(args, runner_args, on_line=(lambda d: stream.token(d["token"]) if "token" in d else None)
                            if stream else None, on_push=pushes.append)
        result = [d for d in lines if "output_ids" in d][-1]
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


def _chat_setup(args, manifest, tok):
    """(Conversation or None, stop ids): --chat/--interactive with a tokenizer put text in its chat
    template and stop where the template ends a reply; without a tokenizer, --prompt/--chat say
    why there is none and what to do."""
    from edgesmith.errors import EdgesmithError

    eos = tuple(manifest.config.eos_token_ids or ())
    if tok is None:
        if args.prompt is not None or args.chat:
            from edgesmith.runtime.text import no_tokenizer_message

            raise EdgesmithError(no_tokenizer_message(args.bundle, manifest, "--chat" if args.chat else "--prompt"))
        return None, eos
    if not (args.chat or args.interactive):
        return None, eos
    from edgesmith.runtime.chat import Conversation, stop_ids

    if args.tokens is not None:
        raise EdgesmithError("--chat and --interactive put text in the chat template: give the first turn with "
                             "--prompt, not --tokens")
    return Conversation(tok, str(args.bundle)), tuple(sorted(stop_ids(tok, eos)))


def _sampling_args(args, stop) -> list[str]:
    out = ["-n", str(args.max_new_tokens), "--temperature", str(args.temperature), "--top-p", str(args.top_p),
           "--seed", str(args.seed)]
    if getattr(args, "context", None) is not None:
        out += ["--context", str(args.context)]
    return out + (["--stop-ids", ",".join(map(str, stop))] if stop else [])


def _run_interactive(args, tok, conversation, stop, first) -> int:
    """A conversation on one KV cache: the runner keeps it, each typed line is a turn."""
    from edgesmith.runtime.chat import Interactive

    if args.engine == "python" and not args.device:
        from edgesmith.errors import EdgesmithError
        raise EdgesmithError("--interactive runs on the bundle's runner; drop --engine python")
    tty = sys.stdin.isatty()

    def read():
        if tty:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if line and not tty and not args.json:
            print(f"> {line.rstrip()}", flush=True)  # a piped conversation reads as one
        return line.rstrip("\n") if line else None

    session = Interactive(tok, conversation, set(stop), read, first=first, as_json=args.json)
    try:
        _run_runner(args, ["generate", "--interactive", *_sampling_args(args, stop), "--stream"],
                    on_line=session.on_line, stdin=session.feed)
    finally:
        session.close()
    return 0


def _print_timings(r: dict, emulated: bool) -> None:
    label = " (emulated: qemu, not the device's speed)" if emulated else ""
    parts = [f"prompt {r['prompt_tokens']} tokens: {r.get('prefill_tok_s') or 0:.1f} tok/s",
             f"generated {len(r['output_ids'])} tokens: {r.get('decode_tok_s') or 0:.1f} tok/s"]
    if r.get("peak_rss_kb"):
        parts.append(f"peak RSS {r['peak_rss_kb'] / 1024:.0f} MiB")
    print("\n[" + ", ".join(parts) + "]" + label, file=sys.stderr)


def add_parser(sub) -> None:
    r = sub.add_parser("run", help="generate tokens with a bundle")
    r.add_argument("bundle", type=Path)
    r.add_argument("--prompt", help="text (the bundle's tokenizer: the checkpoint's, or for random: Phi-3 presets "
                   "the one `edgesmith tokenizer fetch` builds)")
    r.add_argument("--tokens", type=ids, help="prompt as token ids: 1,2,3")
    r.add_argument("-n", "--max-new-tokens", type=count, default=32, help="tokens to generate at most (default 32)")
    r.add_argument("--temperature", type=at_least(0.0, float), default=0.0,
                   help="sampling temperature; 0 = greedy (default)")
    r.add_argument("--top-p", type=top_p, default=1.0,
                   help="sample from the smallest set of tokens whose probabilities add up to this (0-1, default 1)")
    r.add_argument("--seed", type=count, default=0, help="random seed for sampling (default 0)")
    r.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-text token")
    r.add_argument("--json", action="store_true", help="print one JSON object (output_ids, text, timings)")
    r.add_argument("--engine", choices=["runner", "python"], default="runner",
                   help="the bundle's C++ runner (default) or TVM's Python VM in this process")
    r.add_argument("--chat", action="store_true", help="put --prompt in the chat template (Phi-3: <|user|> ... "
                   "<|end|> <|assistant|>) and stop at the end of the reply")
    r.add_argument("--interactive", action="store_true", help="a conversation on one KV cache: each line typed "
                   "(or piped) is a turn, in the chat template (token ids 1,2,3 without a tokenizer); an empty "
                   "line or end of input ends it. --prompt is the first turn; --timeout is per turn")
    r.add_argument("--context", type=int, metavar="N", help="KV cache size in tokens, at most the compiled "
                   "context (default: the compiled context)")
    device_options(r)
    r.set_defaults(func=cmd_run)
