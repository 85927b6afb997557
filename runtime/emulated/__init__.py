"""The emulated devices the tests and the README demo run on, all on loopback:

| device | reached by                                   | what answers                                   |
| ------ | -------------------------------------------- | ---------------------------------------------- |
| board  | ssh 127.0.0.1:2222 (paramiko)                | fault proxy (devd) -> OpenSSH sshd -i per link |
| phone  | adb server :5038 -> `adb connect` :5557      | device-side ADB protocol server (devd, adbd.py)|

Both run aarch64 code through qemu (the exec_wrapper of their devices.yaml entries). Their
state — ports, pids, keys, sandboxes, logs — lives in one folder ($EDGESMITH_STATE, default
~/.cache/edgesmith/emulated): STATE/state.json, ssh/, board/ (the board's home), phone/ (the
phone's /data/local/tmp), faults/, logs/. Keys and sandboxes survive a stop; processes do not.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from edgesmith.errors import EdgesmithError
from edgesmith.runtime.devices import emulated_state_dir
from edgesmith.targets.presets import get_preset

from . import sshd as _sshd
from .devd import PORTS_FILE
from .faults import KINDS as FAULT_KINDS, clear_fault, set_fault

HOST = "127.0.0.1"
DEFAULT_PORTS = {"ssh": 2222, "adb_device": 5557, "adb_server": 5038}
# How each runs its aarch64 binaries here: as its target's bundle layout says (targets/layouts.py:
# the board's glibc from the cross sysroot; a phone has none, its bundles bring their loader).
BOARD_WRAPPER = list(get_preset("arm64-linux").layout.qemu_wrapper("aarch64", installed=False))
PHONE_WRAPPER = list(get_preset("android-arm64").layout.qemu_wrapper("aarch64", installed=False))
QEMU = BOARD_WRAPPER[0]

__all__ = ["start_emulators", "stop_emulators", "emulator_status", "emulated_device_entries", "write_devices_file",
           "set_fault",
           "clear_fault", "FAULT_KINDS", "DEFAULT_PORTS"]


def _state(state_dir) -> Path:
    return Path(state_dir) if state_dir else emulated_state_dir()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name: [0] the state, [19] the start time."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks: tells a live pid from a reused one."""
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else None


def _alive(entry: dict | None) -> bool:
    """Running, and the process we started: a died one that nobody reaped yet (a zombie, state Z)
    keeps its pid and start time, so the state is checked too."""
    if not entry:
        return False
    fields = _stat(entry["pid"])
    if len(fields) <= 19 or fields[19] != entry["start"]:
        return False
    if fields[0] in ("Z", "X"):
        try:  # our own child (started in this process): reap it
            os.waitpid(entry["pid"], os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


def _listening(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1).close()
        return True
    except OSError:
        return False


def _adb_env(state: Path) -> dict:
    home = state / "adb-home"
    home.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "HOME": str(home), "TMPDIR": str(home), "ANDROID_SDK_HOME": str(home)}


def _adb(state: Path, port: int, *args: str, timeout: float = 10) -> subprocess.CompletedProcess:
    # -H: the server is named, so a client never starts one of its own (runtime/transports/adb.py)
    return subprocess.run([shutil.which("adb") or "adb", "-H", HOST, "-P", str(port), *args], env=_adb_env(state),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _log_tail(log: Path | None) -> str:
    if log is None or not log.is_file():
        return ""
    lines = [l for l in log.read_text(errors="replace").splitlines() if l.strip()]
    return f" (its log {log}: {lines[-1][:200]})" if lines else f" (see {log})"


def _wait(predicate, timeout: float, what: str, log: Path | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise EdgesmithError(f"emulated devices: {what} did not come up within {timeout:g} s{_log_tail(log)}")


def _exited(what: str, log: Path) -> EdgesmithError:
    return EdgesmithError(f"emulated devices: {what} exited at start{_log_tail(log)}")


def emulator_status(state_dir=None) -> dict:
    state = _state(state_dir)
    path = state / "state.json"
    info = json.loads(path.read_text()) if path.is_file() else {}
    procs = info.get("processes", {})
    alive = {name: _alive(entry) for name, entry in procs.items()}
    return {
        "state_dir": str(state),
        "running": bool(procs) and all(alive.values()),
        "host": info.get("host", HOST),
        "ports": info.get("ports", {}),
        "pids": {name: entry["pid"] for name, entry in procs.items()},
        "alive": alive,
    }


def emulated_device_entries(status: dict) -> list[dict]:
    """devices.yaml entries for the running board and phone (the shipped file holds the same
    with the default ports)."""
    state, ports = status["state_dir"], status["ports"]
    return [
        {"name": "board", "transport": "ssh", "target": "arm64-linux", "workdir": "edgesmith",
         "exec_wrapper": BOARD_WRAPPER, "tags": ["arm64", "emulated"],
         "ssh": {"host": HOST, "port": ports["ssh"], "key_file": f"{state}/ssh/client_ed25519",
                 "known_hosts": f"{state}/ssh/known_hosts"}},
        {"name": "phone", "transport": "adb", "target": "android-arm64", "workdir": "/data/local/tmp/edgesmith",
         "exec_wrapper": PHONE_WRAPPER, "tags": ["arm64", "android", "emulated"],
         "adb": {"serial": f"{HOST}:{ports['adb_device']}", "server_port": ports["adb_server"]}},
    ]


def write_devices_file(status: dict, path: Path) -> Path:
    """A devices.yaml for these running emulators: the host, arm64 under qemu here, the board and
    the phone on the ports they really use (what `--free-ports` needs, since the shipped file names
    the default ports)."""
    import yaml

    entries = [{"name": "host", "transport": "local", "target": "host", "tags": ["host"],
                "description": "this machine (real timings)"},
               {"name": "arm64-qemu", "transport": "local", "target": "arm64-linux", "exec_wrapper": BOARD_WRAPPER,
                "tags": ["arm64", "emulated"], "description": "this machine running aarch64 code under qemu"},
               *emulated_device_entries(status)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("# written by `edgesmith emulators start --devices-out`: the running emulated devices\n"
                   + yaml.safe_dump({"devices": entries}, sort_keys=False))
    os.replace(tmp, path)
    return path


def start_emulators(state_dir: Path | None = None, *, faults: dict[str, tuple[str, int] | str] | None = None,
                    ports: dict[str, int] | None = None, timeout: float = 30, phone: bool = True) -> dict:
    """Start the board (sshd + its link) and the phone (ADB device server + a private adb server),
    all on loopback; idempotent. ports overrides DEFAULT_PORTS (ssh, adb_device, adb_server; 0
    picks a free one). faults: {device: kind or (kind, after_bytes)} to switch on at once.
    phone=False: the board alone (needs only sshd: no adb server is started)."""
    state = _state(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    wanted = {**DEFAULT_PORTS, **(ports or {})}
    status = emulator_status(state)
    same_ports = all(v == 0 or status["ports"].get(k) == v for k, v in wanted.items())
    if not (status["running"] and same_ports and (not phone or "adb_server" in status["pids"])):
        stop_emulators(state)
        status = _start(state, wanted, timeout, phone)
    clear_fault(state)
    for device, fault in (faults or {}).items():
        kind, after = (fault, 0) if isinstance(fault, str) else fault
        set_fault(state, device, kind, after)
    return status


def _start(state: Path, ports: dict[str, int], timeout: float, phone: bool = True) -> dict:
    """ports: wanted ports, 0 for one the OS picks. The device server binds its two itself and
    reports them; sshd has none (the device server hands it each connection); the adb server
    cannot take port 0, so it gets a free port and a new one if another process took it first."""
    for tool in (QEMU, "adb") if phone else ():
        if shutil.which(tool) is None:
            raise EdgesmithError(f"emulated devices need {tool} (apt-get install "
                                 f"{'qemu-user-static' if tool == QEMU else 'adb'})")
    if not os.access("/usr/sbin/sshd", os.X_OK):
        raise EdgesmithError("the emulated board needs OpenSSH's sshd (apt-get install openssh-server)")
    for name in ("ssh", "adb_device", "adb_server"):
        if ports[name] and _listening(ports[name]):
            raise EdgesmithError(f"emulated devices: port {HOST}:{ports[name]} ({name}) is taken; stop what "
                                 f"holds it or pick another port")
    logs = state / "logs"
    logs.mkdir(exist_ok=True)
    ports = dict(ports)
    processes: dict[str, dict] = {}

    def record(name: str, proc: subprocess.Popen) -> None:
        processes[name] = {"pid": proc.pid, "start": _start_time(proc.pid)}
        (state / "state.json").write_text(json.dumps({"host": HOST, "ports": ports, "processes": processes},
                                                     indent=1))

    try:
        config = _sshd.prepare(state)
        (state / PORTS_FILE).unlink(missing_ok=True)
        with open(logs / "devd.log", "ab") as log:
            devd = subprocess.Popen(
                [sys.executable, "-m", "edgesmith.runtime.emulated.devd", "--state", str(state), "--host", HOST,
                 "--adb-port", str(ports["adb_device"]), "--ssh-port", str(ports["ssh"]),
                 "--sshd-config", str(config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        record("devd", devd)
        _wait(lambda: devd.poll() is not None or (state / PORTS_FILE).is_file(), timeout, "the device server",
              logs / "devd.log")
        if devd.poll() is not None:
            raise _exited("the device server", logs / "devd.log")  # its log says why (a port taken)
        bound = json.loads((state / PORTS_FILE).read_text())
        ports.update(ssh=bound["ssh"], adb_device=bound["adb_device"])
        _sshd.write_known_hosts(state, HOST, ports["ssh"])
        record("devd", devd)

        if not phone:
            return emulator_status(state)
        record("adb_server", _start_adb_server(state, ports, timeout))
        serial = f"{HOST}:{ports['adb_device']}"
        _adb(state, ports["adb_server"], "connect", serial)
        _wait(lambda: _adb(state, ports["adb_server"], "-s", serial, "get-state").stdout.strip() == "device",
              timeout, f"adb connect {serial}", logs / "adb.log")
    except BaseException:
        stop_emulators(state)
        raise
    return emulator_status(state)


def _start_adb_server(state: Path, ports: dict, timeout: float, tries: int = 5) -> subprocess.Popen:
    """A private adb server: its own port, HOME and TMPDIR; `nodaemon` so its pid is ours. With
    no port asked for, a free one, and another if something took it before adb bound it."""
    log_path = state / "logs" / "adb.log"
    chosen = not ports["adb_server"]
    for _ in range(tries if chosen else 1):
        port = ports["adb_server"] = ports["adb_server"] if not chosen else _free_port()
        with open(log_path, "ab") as log:
            adb = subprocess.Popen([shutil.which("adb"), "-P", str(port), "nodaemon", "server"],
                                   env=_adb_env(state), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   start_new_session=True)
        _wait(lambda: adb.poll() is not None or _listens(adb.pid, port), timeout, "the adb server", log_path)
        if adb.poll() is None:
            return adb
        if not chosen:
            break
    raise _exited(f"the adb server (port {ports['adb_server']})", log_path)


def _listens(pid: int, port: int) -> bool:
    """Process pid holds the listening socket on HOST:port (not some other process that took it)."""
    want = f"{socket.inet_aton(HOST)[::-1].hex().upper()}:{port:04X}"
    inodes = set()
    try:
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            f = line.split()
            if f[1] == want and f[3] == "0A":  # 0A: LISTEN
                inodes.add(f"socket:[{f[9]}]")
        return any(os.readlink(fd) in inodes for fd in Path(f"/proc/{pid}/fd").iterdir()) if inodes else False
    except OSError:
        return False


def _kill(entry: dict, timeout: float = 5) -> None:
    pid = entry["pid"]
    if not _alive(entry):
        return
    for sig, wait in ((15, timeout), (9, 2)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        end = time.monotonic() + wait
        while time.monotonic() < end:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our child: reap it
                    return
            except ChildProcessError:
                pass
            if not _alive(entry):
                return
            time.sleep(0.05)


def stop_emulators(state_dir=None) -> None:
    """Stop what start_emulators started (by the pids it recorded); keys and sandboxes stay."""
    state = _state(state_dir)
    path = state / "state.json"
    if not path.is_file():
        return
    info = json.loads(path.read_text())
    procs = info.get("processes", {})
    port = info.get("ports", {}).get("adb_server")
    if port and _alive(procs.get("adb_server")) and shutil.which("adb"):
        try:
            _adb(state, port, "disconnect", timeout=5)
            _adb(state, port, "kill-server", timeout=5)
        except subprocess.TimeoutExpired:
            pass
    for name in ("adb_server", "devd", "sshd"):
        if name in procs:
            _kill(procs[name])
    clear_fault(state)
    path.unlink(missing_ok=True)
