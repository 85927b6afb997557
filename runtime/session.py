"""The one way to start a bundle's runner, wherever it runs.

A RunnerSession takes a bundle and where it runs: this machine (device None: in place, an aarch64
bundle through qemu, labelled emulated) or a device of devices.yaml (pushed first, incremental and
verified: runtime/push.py). It checks that the device can run the bundle before anything is
copied, starts the runner as the bundle's layout says (targets/layouts.py: directly, or through
the glibc loader it ships), parses the runner's JSON lines as they stream, and turns any failure
of the runner into one RunnerError. The command, run in BUNDLE (the bundle's folder where it runs):

    [wrapper] <the layout's start> SUBCOMMAND . ARGS

wrapper: the device's exec_wrapper (qemu on the emulated devices; this machine: the qemu the
layout names for an aarch64 bundle); a real device has none.
"""
from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Callable
from pathlib import Path

from edgesmith.compiler.bundle.folder import read_manifest
from edgesmith.compiler.bundle.manifest import Manifest
from edgesmith.errors import EXIT_ERROR, BundleError, EdgesmithError, TargetError
from edgesmith.runtime.device_lock import LockTimeout
from edgesmith.runtime.devices import Device
from edgesmith.runtime.push import PushReport, bundle_digest, push_bundle
from edgesmith.runtime.transports import TRANSPORTS, open_transport
from edgesmith.runtime.transports.base import Deadline, DeviceError, DeviceTimeout, StdinFeed, shell_join
from edgesmith.targets.layouts import Layout, get_layout
from edgesmith.targets.presets import PRESETS, get_preset


class RunnerError(DeviceError, BundleError):
    """The runner started and failed (or printed what is not JSON): its own one-line message, after
    the device's name when it ran on a device. The run's fault, not the device's: exit code 1."""

    exit_code = EXIT_ERROR

    def __init__(self, device: str | None, message: str):
        self.device, self.detail = device, message
        EdgesmithError.__init__(self, f"device '{device}': runner failed: {message}" if device else message)


# ------------------------------------------------------------------ what runs where (the bundle's Layout says)

def this_machine(manifest: Manifest) -> Device:
    """This machine as the device for `manifest`'s bundle: qemu for an aarch64 bundle on x86_64."""
    return host_device(manifest.target.preset, manifest.arch, get_layout(manifest.target.layout),
                       manifest.device.api if manifest.device else None)


def host_device(target: str, arch: str, layout: Layout, gpu_api: str | None = None) -> Device:
    """This machine as the device for a bundle of `target`, `arch` and `layout` (the layout says
    how qemu runs it here: emulated; an arm64 WebGPU bundle also needs the arm64 Mesa)."""
    from edgesmith.targets.cache import cache_root

    try:
        wrapper = layout.qemu_wrapper(arch)
    except TargetError as err:
        raise BundleError(str(err)) from None
    if wrapper and gpu_api == "webgpu":
        # an arm64 Vulkan bundle: Debian's arm64 Mesa (lavapipe) as qemu's root, where install.sh
        # fetched it; without it the runner says there is no Vulkan device, in one line
        from edgesmith.targets.runtime_libs import arm64_vulkan_root, arm64_vulkan_wrapper

        root = arm64_vulkan_root()
        if root is not None:
            wrapper = arm64_vulkan_wrapper(root)
    return Device(name="host", transport="local", target=target,
                  workdir=str(cache_root() / "devices" / "host"), exec_wrapper=wrapper,
                  tags=("emulated",) if wrapper else ())


def runner_argv(bundle: Path) -> list[str]:
    """How this machine starts `bundle`'s runner, without the runner's own arguments (absolute
    paths: for running a runner by hand, as tests that bypass the session do)."""
    manifest = read_manifest(bundle)
    _check_runner(bundle, manifest)
    start = get_layout(manifest.target.layout).start(str(Path(bundle).resolve() / "bin"))
    return [*this_machine(manifest).exec_wrapper, *start]


def missing_runner(bundle, manifest: Manifest) -> str:
    """Why `bundle` has no runner: its target has none yet (and what it needs), or it was damaged."""
    preset = PRESETS.get(manifest.target.preset)
    note = (manifest.device and manifest.device.runtime_missing) or (preset.gpu.runtime_note if preset and preset.gpu
                                                                     else "")
    if preset is not None and preset.layout.built_on_device:
        return (f"bundle '{bundle}' (target {preset.name}) has its runner built on the device: copy the bundle "
                "there and run bin/build-on-device.sh")
    if note:
        runnerless = [p.name for p in PRESETS.values() if p.gpu and p.gpu.runtime_note]
        return (f"bundle '{bundle}' (target {preset.name if preset else '?'}) ships no runner ({', '.join(runnerless)} "
                f"have none yet): {note}")
    return f"{Path(bundle) / 'bin' / 'runner'} not found; the bundle is incomplete: copy it again or recompile"


def _check_runner(bundle: Path, manifest: Manifest) -> None:
    if (manifest.device and manifest.device.runtime_missing) or not (Path(bundle) / "bin" / "runner").is_file():
        raise BundleError(missing_runner(bundle, manifest))


class IncompatibleBundle(DeviceError, BundleError):
    """The bundle is for another device (arch, layout): the command's fault, not the device's, so
    exit code 1, not a device failure's 4."""

    exit_code = EXIT_ERROR


def check_compatible(device: Device, manifest: Manifest) -> None:
    """Refuse a bundle the device cannot run, before anything is copied: another arch, or a layout
    the device's cannot start (a glibc-linked runner on a phone)."""
    preset = get_preset(device.target)
    built_for = manifest.target.preset
    if manifest.arch != preset.arch:
        raise IncompatibleBundle(device.name, f"runs {preset.arch} (target {preset.name}) and the bundle is for "
                                       f"{manifest.arch} (target {built_for}); compile it with --target {preset.name}")
    bundle_layout = get_layout(manifest.target.layout)
    if not preset.layout.runs(bundle_layout):
        raise IncompatibleBundle(device.name, f"{preset.layout.refusal(bundle_layout, built_for)}; compile it with "
                                       f"--target {preset.name}")


def device_bundle_dir(transport, device: Device, bundle: Path, timeout: float = 10) -> str:
    """WORKDIR/bundles/DIGEST: named by the manifest's sha256 (runtime/push.bundle_digest), not
    by the local folder's name, so two bundles that share a name never share a folder."""
    workdir = device.workdir
    if not posixpath.isabs(workdir):
        workdir = posixpath.join(transport.home(timeout), workdir)
    return posixpath.join(workdir, "bundles", bundle_digest(bundle))


# ------------------------------------------------------------------ the session

class _Lines:
    """The runner's stdout lines as JSON records, as they stream."""

    def __init__(self, on_line: Callable[[dict], None] | None):
        self.on_line, self.records, self.bad = on_line, [], None

    def __call__(self, line: str) -> None:
        line = line.strip()
        if not line or self.bad is not None:
            return
        try:
            record = json.loads(line)
        except ValueError:
            self.bad = line[:200]
            return
        self.records.append(record)
        if self.on_line is not None:
            self.on_line(record)


class RunnerSession:
    """`bundle` ready to run on `device` (None: this machine). Use as a context manager; run()
    as often as needed over the same connection."""

    def __init__(self, bundle: Path, device: Device | None = None, *, timeout: float,
                 manifest: Manifest | None = None, on_push: Callable[[PushReport], None] | None = None):
        self.bundle = Path(bundle).resolve()
        self.manifest = manifest or read_manifest(self.bundle)
        self.local = device is None
        self.device = device or this_machine(self.manifest)
        self.timeout = timeout
        self.on_push = on_push
        self.transport = None
        self.deadline = Deadline(timeout)
        self.push_report: PushReport | None = None
        self.where = str(self.bundle)

    @property
    def emulated(self) -> bool:
        return self.device.emulated

    def __enter__(self) -> RunnerSession:
        check_compatible(self.device, self.manifest)
        _check_runner(self.bundle, self.manifest)  # the bundle's fault, found before any copy
        if TRANSPORTS[self.device.transport].in_place:  # run in place
            _check_executable(self.bundle, self.manifest)
        self.deadline = Deadline(self.timeout)  # connecting, waiting for the push lock and pushing
        self.transport = open_transport(self.device)
        try:
            if not TRANSPORTS[self.device.transport].in_place:  # this machine runs the bundle in place
                try:
                    self.where = device_bundle_dir(self.transport, self.device, self.bundle, self.deadline.left())
                    self.push_report = push_bundle(self.transport, self.bundle, self.where, deadline=self.deadline)
                except DeviceTimeout as err:  # the command's timeout, not what was left of it
                    if isinstance(err, LockTimeout):
                        raise
                    raise DeviceTimeout(self.device.name, err.during, self.timeout) from None
                if self.on_push is not None:
                    self.on_push(self.push_report)
        except BaseException:
            self.transport.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.transport.close()

    def run(self, args: list, *, on_line: Callable[[dict], None] | None = None, stdin: StdinFeed | None = None,
            timeout: float | None = None, deadline: Deadline | None = None) -> list[dict]:
        """`runner SUBCOMMAND BUNDLE ARGS` (args = [SUBCOMMAND, *ARGS]); its JSON lines, each also
        given to on_line as it arrives. stdin feeds the runner's input while it runs. The time it
        may take: `timeout`, else what is left of `deadline`, else the session's timeout."""
        if not args:
            raise EdgesmithError("runner arguments are empty; expected e.g. ['generate', '--tokens', '1,2', '-n', '8']")
        sub, *rest = [str(a) for a in args]
        if timeout is None:
            timeout = deadline.left() if deadline is not None else self.timeout
        said = deadline.total if deadline is not None else timeout  # what the user asked for
        start = get_layout(self.manifest.target.layout).start("./bin")
        argv = [*self.device.exec_wrapper, *start, sub, ".", *rest]
        lines = _Lines(on_line)
        try:
            result = self.transport.run(f"cd {shell_join([self.where])} && {shell_join(argv)}", timeout=timeout,
                                        on_line=lines, what="the run", stdin=stdin)
        except DeviceTimeout:
            if self.local:
                raise RunnerError(None, f"runner for '{self.bundle}' did not finish within {said:g} s; "
                                        "raise the timeout") from None
            raise DeviceTimeout(self.device.name, "the run", said, "link stalled, device hung, or the run needs "
                                                                   "a longer timeout") from None
        name = None if self.local else self.device.name
        if result.exit_code != 0:
            errs = [line.strip() for line in result.stderr.splitlines() if line.strip()]
            message = next((line for line in reversed(errs) if line.startswith("runner: ")), None)
            if message is None and (not errs or result.exit_code in (126, 127)):  # the shell could not start it
                message = self._start_failure(result.exit_code, said_nothing=not errs)
            message = message or errs[-1]
            message = message.removeprefix("runner: ")
            if message.startswith(f"unknown command '{sub}'"):
                message += f"; the bundle's runner predates `{sub}`: recompile the bundle"
            raise RunnerError(name, message)
        if lines.bad is not None:
            raise RunnerError(name, f"runner printed a line that is not JSON: {lines.bad!r}")
        return lines.records

    def _start_failure(self, code: int, said_nothing: bool) -> str | None:
        """Why the runner did not start, or exited non-zero without a word. qemu says nothing about
        a file it may not execute, nor does a wrapper that fails quietly: look at both, and raise
        the error that blames the one at fault. Returns the runner's own fault as a message, or
        None when the shell's own words say it best."""
        if said_nothing and code > 128 and code - 128 in _SIGNALS:
            return f"the runner was killed by {_SIGNALS[code - 128]} (exit code {code}) without a message"
        in_place = TRANSPORTS[self.device.transport].in_place
        here = "on this machine" if in_place else "on the device"
        wrapper = list(self.device.exec_wrapper)
        start = get_layout(self.manifest.target.layout).start("./bin")
        checks = [f"[ -x {shell_join([start[0]])} ] || echo NOEXEC"]
        if wrapper:
            checks.append(f"command -v {shell_join(wrapper[:1])} >/dev/null 2>&1 || echo NOWRAPPER")
        checks.append(f"{shell_join([*wrapper, *start, 'version'])} >/dev/null 2>&1 || echo NOSTART $?")
        try:
            out = self.transport.run(f"cd {shell_join([self.where])} && {{ {'; '.join(checks)}; }}",
                                     timeout=min(30.0, self.timeout), what="looking into the failed run").stdout.split()
        except DeviceError:
            out = []
        shown = " ".join(wrapper)
        blame = EdgesmithError if self.local else (lambda message: DeviceError(self.device.name, message))
        if "NOWRAPPER" in out:
            raise blame(f"exec_wrapper '{shown}' (devices.yaml) is not found {here}: install {wrapper[0]} there or "
                        "fix the device's exec_wrapper")
        if "NOEXEC" in out:
            if in_place:
                raise BundleError(f"bundle {self.bundle} (on this machine): {posixpath.normpath(start[0])} is not "
                                  "executable (the bundle was copied without its file modes); chmod +x "
                                  f"{self.bundle}/bin/*, or copy the bundle again keeping modes (cp -a)")
            raise blame(f"{posixpath.normpath(posixpath.join(self.where, start[0]))} is not executable on the device: "
                        "its filesystem may be mounted noexec; give the device a workdir where programs may run "
                        "(on Android: under /data/local/tmp)")
        if not said_nothing:
            return None
        if "NOSTART" in out and wrapper:
            raise blame(f"the runner exited with code {code} and no message, and the exec_wrapper '{shown}' "
                        f"(devices.yaml) cannot start it at all (`{shown} {' '.join(start)} version` fails {here}); "
                        "fix the exec_wrapper")
        return f"exit code {code} and no message from the runner {here}"


_SIGNALS = {1: "SIGHUP", 2: "SIGINT", 4: "SIGILL", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE",
            9: "SIGKILL (out of memory?)", 11: "SIGSEGV", 13: "SIGPIPE", 15: "SIGTERM"}


def _check_executable(bundle: Path, manifest: Manifest) -> None:
    """This machine starts the bundle's first program in place: it must be executable."""
    first = Path(get_layout(manifest.target.layout).start(str(Path(bundle) / "bin"))[0])
    if not os.access(first, os.X_OK):
        raise BundleError(f"bundle {bundle} (on this machine): {first.relative_to(bundle)} is not executable (the "
                          f"bundle was copied without its file modes); chmod +x {first.parent}/*, or copy the "
                          "bundle again keeping modes (cp -a)")


# ------------------------------------------------------------------ one-shot helpers

def run_bundle(device: Device | None, bundle: Path, runner_args: list, *, timeout: float, on_line=None,
               on_push=None, stdin: StdinFeed | None = None) -> list[dict]:
    """Push `bundle` to `device` (None: run it here) and run `runner SUBCOMMAND BUNDLE ARGS` there
    (runner_args = [SUBCOMMAND, *ARGS], e.g. ["generate", "--tokens", "1,2,3", "-n", "8"])."""
    with RunnerSession(bundle, device, timeout=timeout, on_push=on_push) as session:
        # one --timeout for the whole command (connect, push, run); a conversation's is per turn
        return session.run(runner_args, on_line=on_line, stdin=stdin,
                           deadline=session.deadline if stdin is None else None)


def run_runner(bundle: Path, args: list, *, timeout: float, on_line=None, stdin: StdinFeed | None = None) -> list[dict]:
    """This machine, with the runner's own argument order: args = [SUBCOMMAND, BUNDLE, *ARGS]."""
    sub, where, *rest = [str(a) for a in args] + ([] if len(args) > 1 else [str(bundle)])
    if Path(where).resolve() != Path(bundle).resolve():
        raise EdgesmithError(f"run_runner: the runner's BUNDLE argument {where} is not the bundle {bundle}")
    return run_bundle(None, bundle, [sub, *rest], timeout=timeout, on_line=on_line, stdin=stdin)


def push_to_device(device: Device, bundle: Path, *, timeout: float) -> PushReport:
    """Only the push half of a session (the tests' and a future `edgesmith push`'s)."""
    with RunnerSession(bundle, device, timeout=timeout) as session:
        return session.push_report
