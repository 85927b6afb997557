"""Device paths a new user hits (issue #12): each failure is one line that blames the right side,
and nothing is left behind — on the device, on this machine, or as a stray process."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from edgesmith.errors import BundleError
from edgesmith.runtime.devices import parse_devices
from edgesmith.runtime.emulated import emulator_status, start_emulators, stop_emulators
from edgesmith.runtime.probe import probe_devices
from edgesmith.runtime.session import run_bundle
from edgesmith.runtime.transports import DeviceError

from emulated_fixtures import *  # noqa: F401,F403
from emulated_fixtures import TOKENS, device_dir, device_files, pytestmark_emulated, wipe

pytestmark = [pytestmark_emulated, pytest.mark.slow]
GENERATE = ["generate", "--tokens", TOKENS, "-n", "4"]


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "edgesmith", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def copy_bundle(bundle: Path, where: Path) -> Path:
    out = where / bundle.name
    shutil.copytree(bundle, out)
    return out


# ---------------------------------------------------------------- one line, the right side

@pytest.mark.parametrize("kind", ["garbage", "cut"])
def test_ssh_link_failure_prints_one_line(devices_yaml, emulators, arm64_bundle, fault, kind, tmp_path):
    """paramiko's own log and traceback ("Exception (client): ...") never reach the console."""
    wipe(emulators, "board")
    fault("board", kind, 0 if kind == "cut" else 200_000)
    p = cli("run", arm64_bundle, "--device", "board", "--devices", devices_yaml, "--tokens", TOKENS, "-n", "2",
            "--timeout", "8")
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert p.returncode == 4 and len(lines) == 1, p.stderr  # 4: a device failure
    assert lines[0].startswith("edgesmith: error: device 'board': ")


@pytest.mark.parametrize("name", ["board", "phone"])
@pytest.mark.parametrize("damage", ["flipped-byte", "missing-file"])
def test_bundle_damaged_here_is_blamed_here(devices, emulators, arm64_bundle, tmp_path, name, damage):
    """A bundle corrupt on this machine is found before the push and named as the local copy's
    fault; the device's copy is untouched and holds no temporaries."""
    run_bundle(devices[name], arm64_bundle, GENERATE, timeout=120)  # the device holds a good copy
    bundle = copy_bundle(arm64_bundle, tmp_path)
    before = device_files(emulators, name, arm64_bundle)
    lib = bundle / "lib" / "model.so"
    if damage == "flipped-byte":
        data = bytearray(lib.read_bytes())
        data[len(data) // 2] ^= 0x40
        lib.write_bytes(bytes(data))
    else:
        lib.unlink()
    # the copy has the same manifest, so the device's copy is shared; make the device need model.so
    dev_lib = device_dir(emulators, name, bundle) / "lib" / "model.so"
    dev_lib.unlink()
    before.pop("lib/model.so")
    with pytest.raises(BundleError) as info:
        run_bundle(devices[name], bundle, GENERATE, timeout=60)
    message = str(info.value)
    assert "on this machine" in message and "lib/model.so" in message, message
    assert not message.startswith("device "), message
    assert device_files(emulators, name, arm64_bundle) == before  # nothing sent, nothing partial


def test_manifest_without_files_is_one_line(devices_yaml, arm64_bundle, tmp_path):
    bundle = copy_bundle(arm64_bundle, tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["files"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    for device in ("board", "phone"):
        p = cli("run", bundle, "--device", device, "--devices", devices_yaml, "--tokens", "1", "-n", "1")
        assert p.returncode == 1 and "internal error" not in p.stderr, p.stderr
        assert "no 'files' table" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_one_broken_device_is_its_own_row(devices, monkeypatch):
    """An unexpected exception while reaching one device (here the ssh transport failing to
    import) is that device's row; the others still report."""
    import edgesmith.runtime.transports as transports

    real = transports.open_transport

    def broken(device):
        if device.transport == "ssh":
            raise ImportError("No module named 'paramiko'", name="paramiko")
        return real(device)

    monkeypatch.setattr("edgesmith.runtime.probe.open_transport", broken)
    rows = {r["name"]: r for r in probe_devices(list(devices.values()), timeout=30)}
    assert not rows["board"]["reachable"] and "paramiko" in rows["board"]["error"]
    assert rows["phone"]["reachable"] and rows["host"]["reachable"]


# ---------------------------------------------------------------- adb: no stray server, no shell_v2

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _adb_servers(port: int) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"adb") and str(port).encode() in b" ".join(cmd):
                pids.append(int(proc.name))
    return pids


def test_adb_server_we_start_is_stopped(emulators):
    """No adb server listens on the device's server_port: edgesmith starts one it tracks and stops
    it when done, instead of adb's untracked background fork-server."""
    port = _free_port()
    entry = {"name": "phone2", "transport": "adb", "target": "android-arm64", "workdir": "/data/local/tmp/es",
             "exec_wrapper": ["qemu-aarch64-static"],
             "adb": {"serial": f"127.0.0.1:{emulators['ports']['adb_device']}", "server_port": port}}
    device = parse_devices([entry], "test")["phone2"]
    try:
        [row] = probe_devices([device], timeout=30)
        assert row["reachable"], row["error"]
        assert not _adb_servers(port), "an adb server outlived the probe"
    finally:
        for pid in _adb_servers(port):
            os.kill(pid, signal.SIGKILL)


def test_adbd_without_shell_v2_is_named(emulators, tmp_path):
    from edgesmith.runtime.emulated.adbd import Phone, serve

    phone = Phone(tmp_path / "old-phone", tmp_path, "old-phone", features="cmd")
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=serve, args=(phone, listener), daemon=True).start()
    entry = {"name": "old", "transport": "adb", "target": "android-arm64", "workdir": "/data/local/tmp/es",
             "adb": {"serial": f"127.0.0.1:{listener.getsockname()[1]}",
                     "server_port": emulators["ports"]["adb_server"]}}
    device = parse_devices([entry], "test")["old"]
    [row] = probe_devices([device], timeout=30)
    subprocess.run(["adb", "-H", "127.0.0.1", "-P", str(emulators["ports"]["adb_server"]), "disconnect",
                    entry["adb"]["serial"]],
                   capture_output=True, timeout=10)
    assert not row["reachable"]
    assert "lacks the shell_v2 protocol (Android 7 and later have it)" in row["error"], row["error"]


# ---------------------------------------------------------------- emulators: a dead device restarts

def test_emulators_restart_a_dead_device_and_write_their_devices_file(tmp_path):
    state = tmp_path / "state"
    out = tmp_path / "devices.yaml"
    p = cli("emulators", "start", "--free-ports", "--devices-out", out, env={"EDGESMITH_STATE": str(state)})
    try:
        assert p.returncode == 0, p.stderr
        status = emulator_status(state)
        assert status["running"]
        listed = {d["name"]: d for d in yaml.safe_load(out.read_text())["devices"]}
        assert set(listed) == {"host", "arm64-qemu", "board", "phone"}
        assert listed["board"]["ssh"]["port"] == status["ports"]["ssh"]
        # In this (long-lived) process a device that dies stays a zombie until reaped: start it here.
        stop_emulators(state)
        status = start_emulators(state, ports={"ssh": 0, "adb_device": 0, "adb_server": 0})
        os.kill(status["pids"]["devd"], signal.SIGKILL)
        import time
        for _ in range(100):  # until the kernel has made it a zombie
            if Path(f"/proc/{status['pids']['devd']}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
            time.sleep(0.05)
        assert not emulator_status(state)["running"]
        again = start_emulators(state, ports={"ssh": 0, "adb_device": 0, "adb_server": 0})
        assert again["running"] and again["pids"]["devd"] != status["pids"]["devd"]
    finally:
        stop_emulators(state)


# ---------------------------------------------------------------- issue #34's smaller items

class SlowLink:
    """A TCP proxy to 127.0.0.1:port that holds every chunk `delay` seconds each way: a link with
    that latency (the emulated devices have no delay fault)."""

    def __init__(self, port: int, delay: float):
        self.port, self.delay = port, delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst) -> None:
        import time

        try:
            while data := src.recv(65536):
                time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def test_timeout_holds_on_a_slow_link(devices, emulators, arm64_bundle):
    """--timeout 2 over a 0.25 s link: the whole command (connect, push, run) gives up at 2 s, not
    at the sum of each step's own timeout."""
    import dataclasses
    import time

    from edgesmith.runtime.transports import DeviceTimeout

    wipe(emulators, "board")
    link = SlowLink(emulators["ports"]["ssh"], 0.25)
    board = devices["board"]
    pub = Path(emulators["state_dir"]) / "ssh" / "host_ed25519.pub"
    pinned = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True,
                            check=True).stdout.split()[1]
    slow = dataclasses.replace(board, settings=dataclasses.replace(board.settings, port=link.address[1],
                                                                   known_hosts=None, host_key=pinned))
    try:
        t0 = time.monotonic()
        with pytest.raises(DeviceTimeout) as info:
            run_bundle(slow, arm64_bundle, GENERATE, timeout=2)
        took = time.monotonic() - t0
    finally:
        link.close()
    assert str(info.value).startswith("device 'board': no answer within 2 s during "), str(info.value)
    assert took < 2 + 1.5, f"--timeout 2 gave up after {took:.1f} s"


@pytest.mark.parametrize("name", ["board", "phone"])
@pytest.mark.parametrize("wrapper, says", [
    (["false"], "the runner exited with code 1 and no message, and the exec_wrapper 'false' (devices.yaml) cannot "
                "start it at all"),
    (["/nonexistent/qemu-aarch64"], "exec_wrapper '/nonexistent/qemu-aarch64' (devices.yaml) is not found on the "
                                    "device"),
])
def test_bad_exec_wrapper_is_blamed(devices, arm64_bundle, name, wrapper, says):
    import dataclasses

    device = dataclasses.replace(devices[name], exec_wrapper=tuple(wrapper))
    with pytest.raises(DeviceError) as info:
        run_bundle(device, arm64_bundle, GENERATE, timeout=60)
    assert str(info.value) == f"device '{name}': {says}" or str(info.value).startswith(f"device '{name}': {says}")
    assert "runner failed" not in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["board", "phone"])
def test_runner_that_may_not_execute_is_named(devices, emulators, arm64_bundle, tmp_path, name):
    """A bundle copied without its file modes still runs on a device (the push makes its programs
    executable); a device copy that cannot execute (a noexec filesystem: here its mode taken away)
    is named, not "exit code 1, no message"; and in place on this machine, the bundle is blamed."""
    bundle = copy_bundle(arm64_bundle, tmp_path)
    for f in (bundle / "bin").iterdir():
        f.chmod(0o644)
    assert run_bundle(devices[name], bundle, GENERATE, timeout=120)[-1]["stop_reason"] == "length"
    loader = device_dir(emulators, name, bundle) / "bin" / "ld-linux-aarch64.so.1"
    loader.chmod(0o644)
    try:
        with pytest.raises(DeviceError) as info:
            run_bundle(devices[name], bundle, GENERATE, timeout=60)
    finally:
        loader.chmod(0o755)
    message = str(info.value)
    assert message.startswith(f"device '{name}': ") and "bin/ld-linux-aarch64.so.1 is not executable on the device" \
        in message, message
    with pytest.raises(BundleError, match=r"\(on this machine\): bin/ld-linux-aarch64.so.1 is not executable"):
        run_bundle(None, bundle, GENERATE, timeout=60)


def test_symlink_out_of_the_bundle_is_never_pushed(devices, emulators, arm64_bundle, tmp_path):
    """A bundle file that is a link to a file outside the bundle (here with the very bytes the
    manifest expects, so only the link gives it away) is refused before anything is sent."""
    bundle = copy_bundle(arm64_bundle, tmp_path / "copy")
    outside = tmp_path / "elsewhere.so"
    shutil.move(bundle / "lib" / "model.so", outside)
    (bundle / "lib" / "model.so").symlink_to(outside)
    wipe(emulators, "board")
    with pytest.raises(BundleError) as info:
        run_bundle(devices["board"], bundle, GENERATE, timeout=60)
    message = str(info.value)
    assert "(on this machine): lib/model.so leads outside the bundle (symbolic link" in message, message
    assert str(outside) in message and "\n" not in message
    assert not device_files(emulators, "board", bundle)
