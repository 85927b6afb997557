"""SSH: commands over an exec channel, files over SFTP (paramiko).

Host keys are never accepted blindly: a pinned fingerprint (`ssh.host_key`) or a known_hosts
entry must match, otherwise the connection is refused (paramiko's RejectPolicy). The socket is
ours, with TCP_USER_TIMEOUT and keepalives, and every call runs under a watchdog that closes the
connection when its time is up, so a dead link fails in the call's timeout, not never.
"""
from __future__ import annotations

import base64
import getpass
import hashlib
import logging
import os
import re
import select
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import paramiko

from edgesmith.runtime.devices import opt_path

from .base import (DeviceTimeout, DeviceUnreachable, HostKeyError, LineCallback, LineSplitter, RunResult,
                   StdinFeed, Transport, TransferError, Watchdog, shell_join)

TCP_USER_TIMEOUT_MS = 15_000
EOF_GRACE_S = 2.0
# paramiko logs a garbled or cut link at ERROR with its traceback ("Exception (client): Invalid
# packet blocking", "Error reading SSH protocol banner"); our one-line DeviceError says it. With no
# handler anywhere Python would print those on stderr: they go to the caller's logging only
# (the CLI shows them with --debug).
logging.getLogger("paramiko").addHandler(logging.NullHandler())


def fingerprint(key: paramiko.PKey) -> str:
    """The key's fingerprint as `ssh-keygen -lf` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class _Pinned(paramiko.MissingHostKeyPolicy):
    def __init__(self, pinned: str):
        self.pinned = pinned.rstrip("=")

    def missing_host_key(self, client, hostname, key):
        offered = fingerprint(key)
        if offered != self.pinned:
            raise _KeyRefused(f"host key {offered} does not match the pinned ssh.host_key {self.pinned}; "
                              "if the device was reinstalled, check the new key out of band and pin it")


class _Reject(paramiko.MissingHostKeyPolicy):
    def __init__(self, known_hosts: Path | None):
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key):
        where = f"in {self.known_hosts}" if self.known_hosts else "(no known_hosts file)"
        raise _KeyRefused(f"host key {fingerprint(key)} for {hostname} is unknown {where}; check it out of "
                          "band, then pin it with ssh.host_key or add it to known_hosts")


class _KeyRefused(Exception):
    pass


# ---------------------------------------------------------------- devices.yaml's ssh: section

FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}=?$")
HOST = re.compile(r"[A-Za-z0-9._:%\[\]-]+")  # a name, an IPv4 or IPv6 address


@dataclass(frozen=True)
class SshConfig:
    host: str
    port: int = 22
    user: str = ""
    key_file: Path | None = None
    password_env: str | None = None  # the name of an environment variable, never the password
    host_key: str | None = None  # pinned "SHA256:..." fingerprint (as `ssh-keygen -lf` prints it)
    known_hosts: Path | None = None

    def __repr__(self) -> str:  # no secret is stored here, but keep reprs short in logs
        return f"SshConfig({self.user}@{self.host}:{self.port})"

    @property
    def where(self) -> str:
        return f"ssh {self.user}@{self.host}:{self.port}"


def read_settings(s) -> SshConfig:
    """The ssh: section (runtime/devices.Fields), field by field."""
    cfg = SshConfig(
        host=s.get("host", str),
        port=s.port("port", 22),
        user=s.get("user", str, "") or getpass.getuser(),
        key_file=opt_path(s.get("key_file", str, None, expand=True)),
        password_env=s.get("password_env", str, None),
        host_key=s.get("host_key", str, None),
        known_hosts=opt_path(s.get("known_hosts", str, None, expand=True)),
    )
    if not HOST.fullmatch(cfg.host):
        raise s.fail("host", f"must be a host name or an address, got {cfg.host!r}")
    if cfg.host_key and not FINGERPRINT.match(cfg.host_key):
        raise s.fail("host_key", "must be a SHA256 fingerprint as `ssh-keygen -lf KEY.pub` prints it "
                                 "(SHA256: and 43 base64 characters)")
    if cfg.password_env and not re.fullmatch(r"[A-Za-z_]\w*", cfg.password_env):
        raise s.fail("password_env", "must name an environment variable that holds the password "
                                     "(the password itself never goes in devices.yaml)")
    s.no_extra()
    return cfg


# ---------------------------------------------------------------- the transport

class SshTransport(Transport):
    def __init__(self, device):
        super().__init__(device)
        self.cfg = device.settings
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._home: str | None = None

    # -------------------------------------------------------------- connection

    def _alive(self) -> bool:
        t = self._client.get_transport() if self._client else None
        return bool(t and t.is_active())

    def close(self) -> None:
        client, self._client, self._sftp = self._client, None, None
        if client is not None:
            client.close()

    def _abort(self) -> None:
        # Called from the watchdog thread: closing the socket wakes every blocked paramiko call.
        client = self._client
        t = client.get_transport() if client else None
        if t is not None:
            sock = t.sock
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            t.close()

    def _connect(self, timeout: float) -> paramiko.SSHClient:
        if self._alive():
            return self._client
        self.close()
        cfg = self.cfg
        try:
            sock = socket.create_connection((cfg.host, cfg.port), timeout=min(timeout, 10))
        except OSError as err:
            raise self.error(DeviceUnreachable, f"cannot connect to {cfg.host}:{cfg.port}: "
                                                f"{err.strerror or err}; is the device on and sshd running?") from None
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, TCP_USER_TIMEOUT_MS)
        client = paramiko.SSHClient()
        if cfg.host_key:
            client.set_missing_host_key_policy(_Pinned(cfg.host_key))
        else:
            known = cfg.known_hosts or Path.home() / ".ssh" / "known_hosts"
            if known.is_file():
                client.load_host_keys(str(known))
            elif cfg.known_hosts:
                sock.close()
                raise self.error(HostKeyError, f"known_hosts file {known} not found (field ssh.known_hosts)")
            client.set_missing_host_key_policy(_Reject(known if known.is_file() else None))
        password = os.environ.get(cfg.password_env) if cfg.password_env else None
        if cfg.password_env and password is None:
            sock.close()
            raise self.error(DeviceUnreachable, f"environment variable {cfg.password_env} (ssh.password_env) "
                                                "is not set")
        explicit = bool(cfg.key_file or password is not None)
        self._client = client
        with Watchdog(timeout, lambda: sock.close()) as dog:
            try:
                client.connect(cfg.host, cfg.port, username=cfg.user, sock=sock,
                               key_filename=str(cfg.key_file) if cfg.key_file else None, password=password,
                               allow_agent=not explicit, look_for_keys=not explicit,
                               # paramiko's own limits a little later than our watchdog's: a slow link
                               # is then our timeout, not paramiko's "Authentication timeout" (which
                               # it raises as an authentication failure)
                               timeout=timeout + 5, banner_timeout=timeout + 5, auth_timeout=timeout + 5,
                               channel_timeout=timeout + 5)
            except _KeyRefused as err:
                self.close()
                raise self.error(HostKeyError, str(err)) from None
            except paramiko.BadHostKeyException as err:
                self.close()
                raise self.error(HostKeyError, f"host key for {cfg.host}:{cfg.port} changed: the server offers "
                                               f"{fingerprint(err.key)}, known_hosts holds "
                                               f"{fingerprint(err.expected_key)}; refusing (possible "
                                               "man-in-the-middle; if the device was reinstalled, update "
                                               "known_hosts or pin the new key with ssh.host_key)") from None
            except paramiko.AuthenticationException as err:
                self.close()
                if dog.fired or "timeout" in str(err).lower():
                    raise DeviceTimeout(self.name, f"the SSH login to {cfg.host}:{cfg.port}", timeout) from None
                how = f"key {cfg.key_file}" if cfg.key_file else ("password" if password else "agent/default keys")
                # the device answered: no "start the emulator" hint (self.error adds it)
                raise DeviceUnreachable(self.name, f"authentication as {cfg.user!r} with {how} was refused") \
                    from None
            except (OSError, EOFError, paramiko.SSHException) as err:
                self.close()
                if dog.fired:
                    raise DeviceTimeout(self.name, f"the SSH handshake with {cfg.host}:{cfg.port}", timeout) \
                        from None
                raise self.error(DeviceUnreachable, f"SSH handshake with {cfg.host}:{cfg.port} failed: "
                                                    f"{_describe(err)}") from None
        return client

    def _sftp_client(self, timeout: float) -> paramiko.SFTPClient:
        client = self._connect(timeout)
        if self._sftp is None:
            self._sftp = client.open_sftp()
        return self._sftp

    def _lost(self, dog: Watchdog, timeout: float, what: str, err: BaseException) -> Exception:
        alive = self._alive()
        self.close()
        if dog.fired:
            return DeviceTimeout(self.name, what, timeout)
        # an EOF, a reset or an SSH-level fault is the link itself, even when the transport's thread
        # has not noticed yet (alive for a moment after a cut); an SFTP status (ENOSPC...) is not
        if not alive or isinstance(err, (EOFError, ConnectionError, paramiko.SSHException)):
            return self.error(DeviceUnreachable, f"connection lost during {what} ({_describe(err)})")
        return self.error(TransferError, f"{what} failed: {_describe(err)}")

    def home(self, timeout: float = 10) -> str:
        if self._home is None:
            with Watchdog(timeout, self._abort) as dog:
                try:
                    self._home = self._sftp_client(timeout).normalize(".")
                except (OSError, EOFError, paramiko.SSHException) as err:
                    raise self._lost(dog, timeout, "finding the login folder", err) from None
        return self._home

    # -------------------------------------------------------------- interface

    def run(self, command: str | Sequence[str], *, timeout: float, on_line: LineCallback | None = None,
            what: str = "a command", stdin: StdinFeed | None = None) -> RunResult:
        if not isinstance(command, str):
            command = shell_join(command)
        client = self._connect(timeout)
        out, err_parts = LineSplitter(on_line), []
        with Watchdog(timeout, self._abort) as dog:
            try:
                chan = client.get_transport().open_session(timeout=timeout)
                chan.exec_command(command)
                if stdin is not None:  # end of input is the channel's EOF (shutdown_write)
                    stdin.start(dog, chan.sendall, chan.shutdown_write)
                exited = None
                while True:
                    select.select([chan], [], [], 0.02)  # exit-status itself does not wake select
                    while chan.recv_ready():
                        out.feed(chan.recv(65536).decode("utf-8", "replace"))
                    while chan.recv_stderr_ready():
                        err_parts.append(chan.recv_stderr(65536))
                    if chan.exit_status_ready():
                        # sshd may send the exit status before the last of the output: read on to
                        # the channel's end (EOF), or a moment more where a background job of the
                        # command keeps its output open
                        exited = exited or time.monotonic()
                        if (chan.eof_received or chan.closed or time.monotonic() - exited > EOF_GRACE_S) \
                                and not chan.recv_ready() and not chan.recv_stderr_ready():
                            break
                        continue
                    if chan.closed or not self._alive():
                        raise EOFError("channel closed before the command's exit status")
                code = chan.recv_exit_status()
                chan.close()
                if code == -1:  # closed without an exit status: the link, not the command
                    raise EOFError("the command's exit status never came")
            except (OSError, EOFError, paramiko.SSHException) as err:
                raise self._lost(dog, timeout, what, err) from None
        return RunResult(code, out.close(), b"".join(err_parts).decode("utf-8", "replace"))

    def push(self, local: Path, remote: str, *, timeout: float) -> None:
        f = open(local, "rb")  # outside the try: a local read error is not the device's
        with f:
            sftp = self._sftp_client(timeout)
            with Watchdog(timeout, self._abort) as dog:
                try:
                    sftp.putfo(f, remote, file_size=os.fstat(f.fileno()).st_size, confirm=True)
                except (OSError, EOFError, paramiko.SSHException) as err:
                    raise self._lost(dog, timeout, f"push of {Path(local).name}", err) from None

    def pull(self, remote: str, local: Path, *, timeout: float) -> None:
        sftp = self._sftp_client(timeout)
        with Watchdog(timeout, self._abort) as dog:
            try:
                sftp.get(remote, str(local))
            except (OSError, EOFError, paramiko.SSHException) as err:
                raise self._lost(dog, timeout, f"pull of {remote}", err) from None


def _describe(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:200]


TRANSPORT = SshTransport
