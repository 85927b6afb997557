"""The emulated arm64 board's SSH side: a private OpenSSH sshd on loopback.

Its own host key, authorized key and config under STATE/ssh/ (never the system's). Every
session goes through a forced command (board-shell) that makes STATE/board/ its home, runs
sftp-server there, and applies the board's disk_full fault (a file-size limit and a `df` that
reports the disk full). aarch64 code runs through the exec wrapper devices.yaml gives the board.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

SSHD = "/usr/sbin/sshd"
SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/lib/ssh/sftp-server",
                "/usr/libexec/sftp-server")


def sftp_server() -> str:
    for path in SFTP_SERVERS:
        if os.access(path, os.X_OK):
            return path
    raise FileNotFoundError("sftp-server not found (apt-get install openssh-server)")


def keygen(path: Path, comment: str) -> None:
    if path.is_file():
        return
    ssh_keygen = shutil.which("ssh-keygen")
    if ssh_keygen is None:
        raise FileNotFoundError("ssh-keygen not found (apt-get install openssh-client)")
    subprocess.run([ssh_keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True,
                   stdin=subprocess.DEVNULL)
    path.chmod(0o600)


def write_known_hosts(state: Path, host: str, port: int) -> None:
    """The board's host key, for the address and port clients reach it on."""
    ssh = state / "ssh"
    host_pub = " ".join((ssh / "host_ed25519.pub").read_text().split()[:2])
    (ssh / "known_hosts").write_text(f"[{host}]:{port} {host_pub}\n")


def prepare(state: Path) -> Path:
    """Keys, authorized_keys, board-shell, sshd_config (known_hosts once the port is known)."""
    ssh = state / "ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    home = state / "board"
    home.mkdir(exist_ok=True)
    keygen(ssh / "host_ed25519", "edgesmith-emulated-board")
    keygen(ssh / "client_ed25519", "edgesmith-client")
    (ssh / "authorized_keys").write_text((ssh / "client_ed25519.pub").read_text())
    sftp = sftp_server()
    fault = state / "faults" / "board"
    shell = ssh / "board-shell"
    shell.write_text(f"""#!/bin/sh
# The emulated board's login: home is a sandbox folder; the disk_full fault applies here.
HOME={shlex.quote(str(home))}; export HOME
cd "$HOME" || exit 1
PATH=/usr/local/bin:/usr/bin:/bin; export PATH
if [ -r {shlex.quote(str(fault))} ]; then
  read kind limit < {shlex.quote(str(fault))}
  if [ "$kind" = disk_full ]; then
    PATH={shlex.quote(str(state / "fault-bin"))}:$PATH
    trap '' XFSZ
    ulimit -f $(( limit / 512 + 1 ))
  fi
fi
case "$SSH_ORIGINAL_COMMAND" in
  {shlex.quote(sftp)}) exec {shlex.quote(sftp)} -d "$HOME" ;;
  "") echo "interactive shells are not emulated; pass a command" >&2; exit 1 ;;
  *) exec /bin/sh -c "$SSH_ORIGINAL_COMMAND" ;;
esac
""")
    shell.chmod(0o755)
    config = ssh / "sshd_config"
    config.write_text(f"""# private sshd of the emulated board, started per connection in inetd mode (sshd -i) by the
# device server, which owns the listening socket: key auth only
HostKey {ssh / 'host_ed25519'}
PidFile none
AuthorizedKeysFile {ssh / 'authorized_keys'}
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
AllowTcpForwarding no
X11Forwarding no
PermitTTY no
Subsystem sftp {sftp}
ForceCommand {shell}
LogLevel INFO
""")
    write_fault_bin(state)
    return config


def write_fault_bin(state: Path) -> None:
    """Commands that replace the real ones while a disk_full fault is on."""
    folder = state / "fault-bin"
    folder.mkdir(exist_ok=True)
    df = folder / "df"
    df.write_text("#!/bin/sh\necho 'Filesystem     1024-blocks    Used Available Capacity Mounted on'\n"
                  "echo 'emulated           1048576 1048576         0     100% /'\n")
    df.chmod(0o755)


def inetd_command(config: Path) -> list[str]:
    """sshd serving one connection on its stdin/stdout (inetd mode): the device server accepts on
    the port it bound itself and hands each connection over, so no port of sshd's own exists to
    be taken by another process between choosing and binding it."""
    if not os.access(SSHD, os.X_OK):
        raise FileNotFoundError(f"{SSHD} not found (apt-get install openssh-server)")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # privilege separation folder sshd insists on as root
    return [SSHD, "-i", "-e", "-f", str(config)]
