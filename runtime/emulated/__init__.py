"""The emulated devices the tests and the README demo run on, all on loopback:

| device | reached by                                   | what answers                                   |
| ------ | -------------------------------------------- | ---------------------------------------------- |
| board  | ssh 127.0.0.1:2222 (paramiko)                | fault proxy (devd) -> private OpenSSH sshd     |
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

from . import sshd as _sshd
from .faults import KINDS as FAULT_KINDS, clear_fault, set_fault

HOST = "127.0.0.1"
DEFAULT_PORTS = {"ssh": 2222, "adb_device": 5557, "adb_server": 5038}
QEMU = "qemu-aarch64-static"
BOARD_WRAPPER = [QEMU, "-L", "/usr/aarch64-linux-gnu"]
PHONE_WRAPPER = [QEMU]  # a phone has no system glibc: bundles bring their loader (android-glibc)

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
    return subprocess.run([shutil.which("adb") or "adb", "-P", str(port), *args], env=_adb_env(state),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _wait(predicate, timeout: float, what: str, log: Path | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    tail = ""
    if log is not None and log.is_file():
        lines = [l for l in log.read_text(errors="replace").splitlines() if l.strip()]
        tail = f" (its log {log}: {lines[-1][:200]})" if lines else f" (see {log})"
    raise EdgesmithError(f"emulated devices: {what} did not come up within {timeout:g} s{tail}")


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
        status = _start(state, {k: v or _free_port() for k, v in wanted.items()}, timeout, phone)
    clear_fault(state)
    for device, fault in (faults or {}).items():
        kind, after = (fault, 0) if isinstance(fault, str) else fault
        set_fault(state, device, kind, after)
    return status


def _start(state: Path, ports: dict[str, int], timeout: float, phone: bool = True) -> dict:
    for tool in (QEMU, "adb") if phone else ():
        if shutil.which(tool) is None:
            raise EdgesmithError(f"emulated devices need {tool} (apt-get install "
                                 f"{'qemu-user-static' if tool == QEMU else 'adb'})")
    if not os.access("/usr/sbin/sshd", os.X_OK):
        raise EdgesmithError("the emulated board needs OpenSSH's sshd (apt-get install openssh-server)")
    for name in ("ssh", "adb_device", "adb_server"):
        if _listening(ports[name]):
            raise EdgesmithError(f"emulated devices: port {HOST}:{ports[name]} ({name}) is taken; stop what "
                                 f"holds it or pick another port")
    logs = state / "logs"
    logs.mkdir(exist_ok=True)
    ports = dict(ports, sshd=_free_port())
    processes: dict[str, dict] = {}

    def record(name: str, proc: subprocess.Popen) -> None:
        processes[name] = {"pid": proc.pid, "start": _start_time(proc.pid)}
        (state / "state.json").write_text(json.dumps({"host": HOST, "ports": ports, "processes": processes},
                                                     indent=1))

    try:
        config = _sshd.prepare(state, listen_port=ports["sshd"], public_port=ports["ssh"], host=HOST)
        record("sshd", _sshd.start_sshd(config, logs / "sshd.log"))
        _wait(lambda: _listening(ports["sshd"]), timeout, "sshd", logs / "sshd.log")

        with open(logs / "devd.log", "ab") as log:
            devd = subprocess.Popen(
                [sys.executable, "-m", "edgesmith.runtime.emulated.devd", "--state", str(state), "--host", HOST,
                 "--adb-port", str(ports["adb_device"]), "--ssh-port", str(ports["ssh"]),
                 "--sshd-port", str(ports["sshd"])],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        record("devd", devd)
        _wait(lambda: _listening(ports["ssh"]) and _listening(ports["adb_device"]), timeout, "the device server",
              logs / "devd.log")

        if not phone:
            return emulator_status(state)
        # A private adb server: its own port, HOME and TMPDIR; `nodaemon` so its pid is ours.
        with open(logs / "adb.log", "ab") as log:
            adb = subprocess.Popen([shutil.which("adb"), "-P", str(ports["adb_server"]), "nodaemon", "server"],
                                   env=_adb_env(state), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   start_new_session=True)
        record("adb_server", adb)
        _wait(lambda: _listening(ports["adb_server"]), timeout, "the adb server", logs / "adb.log")
        serial = f"{HOST}:{ports['adb_device']}"
        _adb(state, ports["adb_server"], "connect", serial)
        _wait(lambda: _adb(state, ports["adb_server"], "-s", serial, "get-state").stdout.strip() == "device",
              timeout, f"adb connect {serial}", logs / "adb.log")
    except BaseException:
        stop_emulators(state)
        raise
    return emulator_status(state)


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
