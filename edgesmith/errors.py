"""One error type the CLI turns into a one-line message (the traceback only with --debug).

Every layer raises `EdgesmithError` (or a subclass) for bad input or a failed
step, with a message that says what was wrong, with the value, and what to do.

Exit codes, the same for every command (README "Exit codes"; `edgesmith --help` lists them):
"""

EXIT_OK = 0  # done
EXIT_ERROR = 1  # a failure: bad input, a failed step, a bug (said as "internal error")
EXIT_USAGE = 2  # the command line itself: an unknown option or value, a missing or conflicting argument
EXIT_REGRESSION = 3  # it ran, and a check failed: slower than the baseline (compare, farm), logits off (--check)
EXIT_DEVICE = 4  # a device failed: unreachable, timed out, refused a transfer; the farm: devices failed
EXIT_INTERRUPTED = 130  # Ctrl-C

EXIT_CODES = {EXIT_OK: "ok", EXIT_ERROR: "error", EXIT_USAGE: "usage (the command line)",
              EXIT_REGRESSION: "regression or failed check", EXIT_DEVICE: "device failures",
              EXIT_INTERRUPTED: "interrupted"}


class EdgesmithError(Exception):
    """A user-facing failure: its message is printed as one line, exit code 1 (or the class's own)."""

    exit_code = EXIT_ERROR


class UsageError(EdgesmithError):
    """The command line asks for something impossible: arguments missing, conflicting, unknown."""

    exit_code = EXIT_USAGE


class ConfigError(EdgesmithError):
    """A checkpoint's config.json is not one we can compile."""


class CheckpointError(EdgesmithError):
    """Weights are missing, truncated or of the wrong shape."""


class TargetError(EdgesmithError):
    """An unknown target, or a toolchain/runtime it needs is missing."""


class BundleError(EdgesmithError):
    """A bundle folder is missing, incomplete, corrupted or for another version."""


def unknown_name(kind: str, name: str, known) -> str:
    """"unknown target 'hots'; did you mean 'host'? known: ..." for a registry lookup that failed."""
    import difflib

    known = list(known)
    # A word of a name first (`android` -> android-arm64, the registry's first such; the others
    # named too), else a near spelling (`hots` -> host).
    words = [k for k in known if name and name.lower() in k.lower().replace("_", "-").split("-")]
    close = words or difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    if len(close) > 1:
        hint += f" (or {', '.join(close[1:])})"
    return f"unknown {kind} '{name}'{hint} known: {', '.join(known)}"


def one_line(err: BaseException) -> str:
    """A failure as one line for a per-device row: our errors as they are, anything else (a bug, a
    library's exception) with its type, so one device's surprise never stops the others' report."""
    if isinstance(err, EdgesmithError):
        return " ".join(str(err).splitlines())
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300]}" if text else type(err).__name__
