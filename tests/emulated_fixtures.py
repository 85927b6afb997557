"""Fixtures for the device tests: the emulated board (real sshd) and phone (real adb server),
started on free loopback ports in a private state folder and stopped afterwards; the arm64
bundle they run. Import what a test file needs: `from emulated_fixtures import *`."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import yaml

from edgesmith.runtime.devices import load_devices
from edgesmith.runtime.emulated import (clear_fault, emulated_device_entries, set_fault,
                                        start_emulators, stop_emulators)

TOKENS = "1,2,3,4,5"

__all__ = ["emulators", "devices_yaml", "devices", "arm64_bundle", "host_bundle", "fault", "sandbox", "wipe",
           "device_files", "device_dir", "TOKENS", "pytestmark_emulated", "board_emulator", "board_device", "needs_sshd"]

# Each test skips only for what it uses (scripts/install.sh installs all of them: CI skips none).
needs_sshd = pytest.mark.skipif(not os.access("/usr/sbin/sshd", os.X_OK),
                                reason="the emulated board needs openssh-server (apt-get install openssh-server)")
pytestmark_emulated = pytest.mark.skipif(
    not (shutil.which("adb") and shutil.which("qemu-aarch64-static") and os.access("/usr/sbin/sshd", os.X_OK)),
    reason="emulated devices need adb, qemu-user-static and openssh-server (apt-get install them)")


@pytest.fixture(scope="session")
def board_emulator(tmp_path_factory):
    """The board alone (sshd and its link; no adb, no qemu), for tests of the SSH side only."""
    state = tmp_path_factory.mktemp("board-only")
    status = start_emulators(state, ports={"ssh": 0, "adb_device": 0, "adb_server": 0}, phone=False)
    try:
        yield status
    finally:
        stop_emulators(state)


@pytest.fixture(scope="session")
def board_device(board_emulator):
    from edgesmith.runtime.devices import parse_devices

    board = [e for e in emulated_device_entries(board_emulator) if e["name"] == "board"]
    return parse_devices(board, "board-only")["board"]


@pytest.fixture(scope="session")
def emulators(tmp_path_factory):
    """The running board and phone: emulator_status() of a private, freshly started set."""
    state = tmp_path_factory.mktemp("emulated")
    status = start_emulators(state, ports={"ssh": 0, "adb_device": 0, "adb_server": 0})
    try:
        yield status
    finally:
        stop_emulators(state)
        for name, pid in status["pids"].items():  # nothing we started may outlive the session
            assert not Path(f"/proc/{pid}").exists() or not _same(pid, name), f"{name} (pid {pid}) still runs"


def _same(pid: int, name: str) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        return {"sshd": b"sshd", "devd": b"devd", "adb_server": b"adb"}[name] in cmd and \
            Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="session")
def devices_yaml(emulators, tmp_path_factory) -> Path:
    """A devices.yaml with the host, a local qemu device and the running board and phone."""
    entries = [{"name": "host", "transport": "local", "target": "host"},
               {"name": "arm64-qemu", "transport": "local", "target": "arm64-linux",
                "exec_wrapper": ["qemu-aarch64-static", "-L", "/usr/aarch64-linux-gnu"]},
               *emulated_device_entries(emulators)]
    path = tmp_path_factory.mktemp("inventory") / "devices.yaml"
    path.write_text(yaml.safe_dump({"devices": entries}, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def devices(devices_yaml):
    return load_devices(devices_yaml)


@pytest.fixture(scope="session")
def arm64_bundle(compiled) -> Path:
    """One arm64 bundle both emulated devices run (android-glibc layout: it ships its loader)."""
    return compiled("random:tiny", "q4f16", "android-arm64")


@pytest.fixture(scope="session")
def host_bundle(compiled) -> Path:
    return compiled("random:tiny", "q4f16", "host")


@pytest.fixture
def fault(emulators):
    """fault(device, kind, after_bytes=0) flips the switch; every fault is cleared after the test."""
    state = Path(emulators["state_dir"])
    yield lambda device, kind, after_bytes=0: set_fault(state, device, kind, after_bytes)
    clear_fault(state)


def sandbox(emulators, device: str) -> Path:
    """The host folder holding the device's workdir: the board's home, the phone's /data/local/tmp."""
    state = Path(emulators["state_dir"])
    return {"board": state / "board" / "edgesmith", "phone": state / "phone" / "edgesmith"}[device]


def wipe(emulators, device: str) -> None:
    shutil.rmtree(sandbox(emulators, device), ignore_errors=True)


def device_dir(emulators, device: str, bundle: Path) -> Path:
    """The host folder holding the device's copy of `bundle`: named by its manifest's sha256,
    computed here with hashlib (not by the code under test)."""
    digest = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()[:32]
    return sandbox(emulators, device) / "bundles" / digest


def device_files(emulators, device: str, bundle: Path) -> dict[str, str]:
    """{relative path: sha256} of every file in the device's copy of `bundle`, temporaries included."""
    root = device_dir(emulators, device, bundle)
    if not root.is_dir():
        return {}
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}
