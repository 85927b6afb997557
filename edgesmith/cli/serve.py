"""`edgesmith serve BUNDLE [--device D] [--port P]`: an OpenAI-compatible HTTP server (the API is
runtime/serve.py; uvicorn serves it). The bundle runs where --device says, through the one
runner session, loaded once; the line `edgesmith serve: listening on http://HOST:PORT/v1` says
where (with --port 0, the port the OS picked)."""
from __future__ import annotations

import sys
from pathlib import Path

from edgesmith.cli.args import at_least, device_options


def cmd_serve(args) -> int:
    import asyncio
    import signal
    import socket

    from edgesmith.compiler.bundle.folder import read_manifest
    from edgesmith.errors import EdgesmithError, UsageError
    from edgesmith.runtime.serve import Model, build_app
    from edgesmith.runtime.session import RunnerSession
    from edgesmith.runtime.text import load_tokenizer

    manifest = read_manifest(args.bundle)
    compiled = manifest.kv_cache.max_total_seq_len
    if args.context and args.context > compiled:
        raise UsageError(f"--context {args.context} exceeds the bundle's compiled context {compiled}; "
                         f"give at most {compiled} (or recompile with a larger --context)")
    tok = load_tokenizer(args.bundle, manifest)
    device = None
    if args.device:
        from edgesmith.runtime.devices import get_device

        device = get_device(args.device, args.devices)
    name = args.name or Path(args.bundle).resolve().name
    # Bind before the model loads: a port in use is said at once, and --port 0's pick is known.
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
        sock.listen(128)  # from here a client's connection waits in the backlog until uvicorn accepts it
    except OSError as err:
        sock.close()
        raise EdgesmithError(f"cannot listen on {args.host}:{args.port} ({err.strerror}); choose another --port "
                             "(0: any free one)") from None
    port = sock.getsockname()[1]
    where = device.name if device else "this machine"
    say(f"edgesmith serve: loading {name} on {where} ...")
    with RunnerSession(args.bundle, device, timeout=args.timeout, manifest=manifest) as session:
        model = Model(session, manifest, tok, name, context=args.context)
        model.start()
        try:
            import uvicorn

            config = uvicorn.Config(build_app(model), log_level="warning", access_log=False, lifespan="off")
            server = uvicorn.Server(config)
            emulated = " (emulated: qemu)" if session.emulated else ""
            say(f"edgesmith serve: {name} on {where}{emulated}, context {model.limit} tokens"
                f"{'' if tok is not None else ', no tokenizer: token ids only'}")
            # uvicorn's own SIGINT handler ends the server gracefully; ours (exit 130 at once) steps aside
            # before the line that says it listens: a Ctrl-C from then on is a clean stop (exit 0), even
            # one that comes before uvicorn has installed its handler.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            try:
                say(f"edgesmith serve: listening on http://{_url_host(args.host)}:{port}/v1 (Ctrl-C stops)")
                asyncio.run(server.serve(sockets=[sock]))
            except KeyboardInterrupt:
                pass
        finally:
            model.close()
    say("edgesmith serve: stopped")
    return 0


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return "localhost"
    return f"[{host}]" if ":" in host else host


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def add_parser(sub) -> None:
    s = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, "
                       "/v1/models; streaming) for a bundle, here or on a device")
    s.add_argument("bundle", type=Path, help="a bundle folder (what `edgesmith compile -o` wrote)")
    s.add_argument("--port", type=at_least(0), default=8080, help="TCP port to listen on (default 8080; 0: any "
                   "free port, printed at start)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only; 0.0.0.0 for every interface)")
    s.add_argument("--name", help="the model's id in the API (default: the bundle folder's name)")
    s.add_argument("--context", type=at_least(1), metavar="N", help="KV cache size in tokens, at most the "
                   "compiled context (default: the compiled context)")
    device_options(s)
    s.set_defaults(func=cmd_serve)
