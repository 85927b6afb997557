"""One error type the CLI turns into a one-line message (the traceback only with --debug).

Every layer raises `EdgesmithError` (or a subclass) for bad input or a failed
step, with a message that says what was wrong, with the value, and what to do.
"""


class EdgesmithError(Exception):
    """A user-facing failure: its message is printed as one line, exit code 1."""

    exit_code = 1


class ConfigError(EdgesmithError):
    """A checkpoint's config.json is not one we can compile."""


class CheckpointError(EdgesmithError):
    """Weights are missing, truncated or of the wrong shape."""


class TargetError(EdgesmithError):
    """An unknown target, or a toolchain/runtime it needs is missing."""


class BundleError(EdgesmithError):
    """A bundle folder is missing, incomplete, corrupted or for another version."""
