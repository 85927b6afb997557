"""edgesmith command line: one module per command, its parser and its handler together. It only
parses; the work is in compiler/ and runtime/.

| module     | command                                                                   |
| ---------- | ------------------------------------------------------------------------- |
| compile    | compile (and --eval)                                                      |
| tune       | tune                                                                      |
| run        | run: prompt, chat, interactive, timings (the conversation: chat)          |
| serve      | serve: the OpenAI-compatible HTTP server (its API: runtime/serve.py)     |
| profile    | profile (bench: its alias), compare                                       |
| inspect    | inspect                                                                   |
| targets    | targets                                                                   |
| quants     | quants                                                                    |
| tokenizer  | tokenizer fetch / show                                                    |
| devices    | devices                                                                   |
| emulators  | emulators start / stop / status                                           |
| farm       | farm run / agent / status                                                 |
| args       | what the parsers share: argument types, the device options                |
| progress   | progress lines and bars on stderr                                         |

A new command is its module (`add_parser(sub)`, which sets `func` to its handler) and one name in
COMMANDS. Imports are lazy so `edgesmith --help` is instant. Every failure we expect is an
EdgesmithError: one line on stderr, exit code 1 (or the error's own), traceback only with --debug.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# In the order `edgesmith --help` lists them.
COMMANDS = ("compile", "tune", "run", "serve", "profile", "inspect", "targets", "quants", "tokenizer", "devices",
            "emulators", "farm")


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line, exit 2 (the command line's fault: errors.EXIT_USAGE), pointing
    at --help; a mistyped choice (a subcommand, --format, --quant, ...) gets a "did you mean"."""

    def error(self, message: str):
        import re

        from edgesmith.errors import EXIT_USAGE

        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            import difflib

            choices = re.findall(r"'([^']*)'", m.group(2)) or [c.strip() for c in m.group(2).split(",")]
            close = difflib.get_close_matches(m.group(1), choices, n=1, cutoff=0.6)
            if close:
                message = f"{message}; did you mean '{close[0]}'?"
        print(f"{self.prog}: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("edgesmith")
    except PackageNotFoundError:  # a checkout run without installing
        ver = "(not installed)"
    try:
        return f"{ver} (Apache TVM {version('apache-tvm')})"  # the package's metadata: no TVM import
    except PackageNotFoundError:
        return ver


EPILOG = """exit codes: 0 ok, 1 error, 2 usage (the command line), 3 regression or failed check
(compare --fail-on-slowdown, farm --baseline, --check), 4 device failures, 130 interrupted (Ctrl-C)"""


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="edgesmith", description="Compile Phi-3 models into int4 bundles for phones "
                                "and boards with Apache TVM, run them there, and measure them.", epilog=EPILOG)
    p.add_argument("--version", action="version", version=f"edgesmith {_version()}",
                   help="print edgesmith's version and exit")
    p.add_argument("--debug", action="store_true", help="show tracebacks and libraries' log output (accepted anywhere on the command line)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           help="one of these; `edgesmith COMMAND --help` for its options")
    for name in COMMANDS:
        importlib.import_module(f"edgesmith.cli.{name}").add_parser(sub)
    return p


def _setup_logging(debug: bool) -> None:
    """Libraries' log output (paramiko's "Exception (client): ...", TVM's) never reaches the console
    unasked: it goes nowhere, or to stderr with --debug."""
    import logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if debug:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.DEBUG)
    else:
        root.addHandler(logging.NullHandler())  # and no "last resort" printing of warnings


_interrupted = False


def _on_sigint(signum, frame):
    # A Ctrl-C that lands in Python code TVM called from C++ comes back out as a bare RuntimeError
    # (tvm_ffi forwards the error, not its type): remember that it was an interrupt.
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def _leave_interrupted():
    # Leave at once: what our code cleans up (a staged bundle, device temporaries) already ran
    # while the interrupt unwound; letting Python tear down TVM's half-built objects only prints
    # their C++ destructors' warnings ("BlockBuilder destroyed with remaining blocks!").
    import os

    print("edgesmith: interrupted", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    argv = list(sys.argv[1:] if argv is None else argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)
    # --debug anywhere: `edgesmith run B --debug` as well as `edgesmith --debug run B`.
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    _setup_logging(debug)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.debug = debug
    from edgesmith.errors import EdgesmithError

    try:
        return args.func(args) or 0
    except EdgesmithError as e:
        if debug:
            raise
        print(f"edgesmith: error: {' '.join(str(e).split(chr(10)))}", file=sys.stderr)  # one line, always
        return e.exit_code
    except KeyboardInterrupt:
        _leave_interrupted()
    except BrokenPipeError:  # `edgesmith inspect B | head`: the reader left, nothing more to say
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # noqa: BLE001 - a bug: still one line unless --debug
        if _interrupted:
            _leave_interrupted()
        if debug:
            raise
        print(f"edgesmith: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
              "(rerun with --debug for the traceback, and please report it)", file=sys.stderr)
        return 1  # an error (2 is the command line's)


if __name__ == "__main__":
    sys.exit(main())

