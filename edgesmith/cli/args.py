"""What the commands' parsers share: argument types (each an argparse type that says what was
wrong in one line) and the device options."""
from __future__ import annotations

import argparse
from pathlib import Path

DEVICES_HELP = ("devices.yaml to read (default: $EDGESMITH_DEVICES, else ./devices.yaml, else the one shipped "
                "with edgesmith)")


def ids(text: str) -> list[int]:
    """Token ids: 1,2,3."""
    try:
        values = [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"token ids must be integers separated by commas, got {text!r}") from None
    if any(i < 0 for i in values):
        raise argparse.ArgumentTypeError(f"token ids cannot be negative, got {text!r}")
    return values


def at_least(minimum: float, kind=int):
    """An argparse type: a number of `kind` that is at least `minimum` (counts, seconds)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if value != value or value < minimum:  # NaN too
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, got {text}")
        if value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}; give the longest you mean "
                                             "(e.g. 86400 for a day)")
        return value

    return parse


count = at_least(0)
positive = at_least(1)
seconds = at_least(0.001, float)


def int_list(text: str) -> list[int]:
    """Counts, a list: 128,512 (profile -p/-n/-t)."""
    try:
        values = [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas (e.g. 128,512), got {text!r}")
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"counts cannot be negative, got {text!r}")
    return values


def top_p(text: str) -> float:
    value = at_least(0.0, float)(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def cool(text: str):
    """--cool-below: a temperature in °C, auto or off."""
    if text in ("auto", "off"):
        return None if text == "off" else "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--cool-below takes a temperature in °C, auto or off; got {text!r}") from None


def check_writable(path: Path, flag: str) -> None:
    """Fail at once, in one line, when `path` (a file or folder to be made) cannot be written
    there (a read-only filesystem, a parent that cannot exist): not after minutes of work."""
    import os
    import tempfile

    from edgesmith.errors import EdgesmithError

    parent = Path(path).absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise EdgesmithError(f"{flag} {path}: cannot write in {err.filename or parent} ({err.strerror}); "
                             "choose a path where files can be made") from None


def device_options(sp) -> None:
    """--device, --devices, --timeout: where a bundle runs (run, profile)."""
    sp.add_argument("--device", help="device name from devices.yaml (default: run here)")
    sp.add_argument("--devices", type=Path, help=DEVICES_HELP)
    sp.add_argument("--timeout", type=seconds, default=600.0, help="seconds before giving up (default 600)")


# One command line: `-o/--out` is always an output path and `--format` always a format. Older
# spellings keep working: `--json` is short for `--format json` (documented), and a renamed flag
# (compile's and tune's `--output`) still parses with a one-line note on stderr.

class _FormatAction(argparse.Action):
    """--format X: also sets `json` (what the commands read) so --format json and --json agree."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.format = values
        namespace.json = values == "json"


class _JsonAction(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.format, namespace.json = "json", True


def format_option(sp, choices: tuple[str, ...], help: str) -> None:
    """--format CHOICE (the first is the default) and --json, short for --format json."""
    sp.add_argument("--format", choices=choices, default=choices[0], action=_FormatAction,
                    help=f"{' or '.join(choices)} (default {choices[0]}): {help}")
    sp.add_argument("--json", action=_JsonAction, default=False, help="short for --format json")


class _RenamedAction(argparse.Action):
    """An old spelling of a flag: stores into the new one's dest and says so once, on stderr."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        import sys

        print(f"edgesmith: note: {option_string} is now {self.new} ({option_string} still works, for now)",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def out_option(sp, help: str, *, old: str | None = None, **kwargs) -> None:
    """-o/--out PATH (dest `out`); old: a former spelling that still parses, hidden from --help."""
    sp.add_argument("-o", "--out", type=Path, help=help, **kwargs)
    if old:
        sp.add_argument(old, dest="out", type=Path, action=_RenamedAction, new="-o/--out", help=argparse.SUPPRESS)
