"""Two runs on one device at once (issue #34): bundles that share a folder name, many first runs
of one bundle on a fresh device, a lock whose holder died, a disk that is full (a real tmpfs as the
device's storage), and an adb server killed mid-push. Runs are `edgesmith run` processes, as a CI
farm or two engineers sharing a board start them; the references are each bundle run alone, in
place, under qemu on this machine (no push, no device folder: nothing of what is tested here)."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgesmith.runtime.session import run_bundle, run_runner
from edgesmith.runtime.transports import DeviceError, open_transport

from emulated_fixtures import *  # noqa: F401,F403
from emulated_fixtures import device_dir, device_files, pytestmark_emulated, sandbox, wipe

pytestmark = [pytestmark_emulated, pytest.mark.slow]
PROMPT = "1,2,3"
N = 8


@pytest.fixture(scope="module")
def twins(arm64_bundle, compiled, tmp_path_factory) -> tuple[Path, Path]:
    """Two different bundles in folders of the same name: a/tiny-arm64 and b/tiny-arm64."""
    other = compiled("random:tiny:seed=7", "q4f16", "android-arm64")
    root = tmp_path_factory.mktemp("twins")
    pair = []
    for side, bundle in (("a", arm64_bundle), ("b", other)):
        shutil.copytree(bundle, root / side / "tiny-arm64")
        pair.append(root / side / "tiny-arm64")
    return pair[0], pair[1]


def alone(bundle: Path) -> list[int]:
    """The bundle's tokens, run in place here under qemu."""
    records = run_runner(bundle, ["generate", str(bundle), "--tokens", PROMPT, "-n", str(N)], timeout=120)
    return records[-1]["output_ids"]


def cli_runs(bundles: list[Path], device: str, devices_yaml: Path, timeout: float = 300, env=None) -> list[dict]:
    """`edgesmith run B --device D --json` for every bundle, all started at once; their exit codes,
    JSON records and stderr."""
    procs = [subprocess.Popen([sys.executable, "-m", "edgesmith", "run", str(b), "--device", device, "--devices",
                               str(devices_yaml), "--tokens", PROMPT, "-n", str(N), "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for b in bundles]
    results = []
    for bundle, p in zip(bundles, procs):
        out, err = p.communicate(timeout=timeout)
        results.append({"bundle": bundle, "rc": p.returncode, "record": json.loads(out) if p.returncode == 0 else None,
                        "stderr": err})
    return results


@pytest.mark.parametrize("name", ["board", "phone"])
def test_same_named_bundles_run_at_once_each_with_its_own_tokens(twins, devices_yaml, emulators, name):
    a, b = twins
    want = {a: alone(a), b: alone(b)}
    assert want[a] != want[b]  # else the test could not tell them apart
    wipe(emulators, name)
    results = cli_runs([a, b] * 4, name, devices_yaml)
    for r in results:
        assert r["rc"] == 0, r["stderr"]
        assert r["record"]["output_ids"] == want[r["bundle"]], f"{r['bundle']} gave the other bundle's tokens"
    # each bundle in a folder of its own on the device, whole, no temporaries left, no lock held
    for bundle in (a, b):
        files = device_files(emulators, name, bundle)
        assert not [f for f in files if f.endswith(".partial")]
        assert files["manifest.json"] == _sha(bundle / "manifest.json")
    assert not list((sandbox(emulators, name) / "bundles").glob(".*.lock*"))


@pytest.mark.parametrize("name", ["board", "phone"])
def test_first_runs_of_one_bundle_push_it_once(arm64_bundle, devices_yaml, emulators, name):
    want = alone(arm64_bundle)
    wipe(emulators, name)
    results = cli_runs([arm64_bundle] * 16, name, devices_yaml)
    assert [r["rc"] for r in results] == [0] * 16, [r["stderr"] for r in results if r["rc"]]
    assert all(r["record"]["output_ids"] == want for r in results)
    pushes = [r["record"]["push"] for r in results]
    senders = [p for p in pushes if p["files_sent"]]
    assert len(senders) == 1, pushes  # one push; the others waited for it, or found the bundle there
    assert senders[0]["files_sent"] == len(list(p for p in arm64_bundle.rglob("*") if p.is_file()))
    assert not [f for f in device_files(emulators, name, arm64_bundle) if f.endswith(".partial")]
    assert not list((sandbox(emulators, name) / "bundles").glob(".*.lock*"))


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- the lock's stale rule

def _lock_dir(emulators, name: str, bundle: Path) -> Path:
    folder = device_dir(emulators, name, bundle)
    return folder.parent / f".{folder.name}.lock"


def _plant_lock(emulators, name: str, bundle: Path, age_s: float) -> Path:
    """A lock as another edgesmith leaves it: its owner file last touched age_s seconds ago."""
    lock = _lock_dir(emulators, name, bundle)
    lock.mkdir(parents=True)
    (lock / "owner").write_text("0123456789abcdef otherhost pid 4242\n")
    then = time.time() - age_s
    os.utime(lock / "owner", (then, then))
    return lock


@pytest.mark.parametrize("name", ["board", "phone"])
def test_a_dead_holders_lock_is_taken_over_and_a_live_one_waited_for(devices, emulators, arm64_bundle, name):
    wipe(emulators, name)
    # Alive (touched just now): a run waits for it, and gives up at its timeout in one line.
    lock = _plant_lock(emulators, name, arm64_bundle, 0)
    t0 = time.monotonic()
    with pytest.raises(DeviceError) as info:
        run_bundle(devices[name], arm64_bundle, ["generate", "--tokens", PROMPT, "-n", "1"], timeout=6)
    took = time.monotonic() - t0
    message = str(info.value)
    assert message.startswith(f"device '{name}': another push of this bundle (otherhost pid 4242, last seen "), message
    assert "still held its lock after 6 s" in message and "\n" not in message
    assert took < 6 + 10, took
    assert lock.is_dir() and not device_files(emulators, name, arm64_bundle)  # not ours to break, nothing sent
    # Dead (unseen for an hour): taken over at once, the run pushes and succeeds, no lock is left.
    shutil.rmtree(lock)
    _plant_lock(emulators, name, arm64_bundle, 3600)
    records = run_bundle(devices[name], arm64_bundle, ["generate", "--tokens", PROMPT, "-n", "1"], timeout=120)
    assert records[-1]["output_ids"] == alone(arm64_bundle)[:1]
    assert not lock.exists() and not list(lock.parent.glob(".*.lock*"))


def test_a_holder_whose_lock_was_taken_over_stops(devices, emulators, arm64_bundle, monkeypatch):
    """The heartbeat finds the owner file no longer ours (another edgesmith broke the lock while our
    link stalled): the holder stops before it renames anything into place."""
    from edgesmith.runtime import device_lock
    from edgesmith.runtime.transports.base import Deadline

    monkeypatch.setattr(device_lock, "HEARTBEAT_S", 0.2)
    wipe(emulators, "board")
    lock_path = _lock_dir(emulators, "board", arm64_bundle)
    remote = f"edgesmith/bundles/{lock_path.name}"
    with open_transport(devices["board"]) as t:
        with device_lock.DeviceLock(t, remote, Deadline(30)) as held:
            assert held.held and (lock_path / "owner").read_text().split()[0] == held.token
            (lock_path / "owner").write_text("fedcba9876543210 thief pid 1\n")  # taken over
            end = time.monotonic() + 20
            while not held.lost and time.monotonic() < end:
                time.sleep(0.1)
            with pytest.raises(DeviceError, match="lost the push lock .* another edgesmith took it over"):
                held.check()
        assert lock_path.is_dir()  # the release leaves the new holder's lock alone
    shutil.rmtree(lock_path)


# ---------------------------------------------------------------- a full disk: a real tmpfs

@contextlib.contextmanager
def tmpfs(where: Path, size: str):
    where.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                       text=True)
    if p.returncode != 0:
        pytest.skip(f"a small disk for the device needs a tmpfs mount, which this machine refuses: {p.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
        shutil.rmtree(where, ignore_errors=True)


def _small_disk_device(devices, emulators, name: str):
    """The device with its workdir on a folder of its sandbox where the test mounts a tmpfs."""
    here = sandbox(emulators, name).parent / "small-disk"
    there = "small-disk" if name == "board" else "/data/local/tmp/small-disk"
    return dataclasses.replace(devices[name], workdir=there), here


def test_disk_full_on_the_phone_is_one_line(devices_yaml, devices, emulators, arm64_bundle, tmp_path):
    """The phone's storage a 4 MiB tmpfs, the bundle 11 MiB: one line saying the disk is full and
    how much is free, before anything is sent; nothing is left there. Then the tmpfs filled up."""
    phone, here = _small_disk_device(devices, emulators, "phone")
    import yaml

    inventory = tmp_path / "devices.yaml"
    entries = yaml.safe_load(devices_yaml.read_text())["devices"]
    for e in entries:
        if e["name"] == "phone":
            e["workdir"] = phone.workdir
    inventory.write_text(yaml.safe_dump({"devices": entries}))
    with tmpfs(here, "4m"):
        p = subprocess.run([sys.executable, "-m", "edgesmith", "run", str(arm64_bundle), "--device", "phone",
                            "--devices", str(inventory), "--tokens", PROMPT, "-n", "2"],
                           capture_output=True, text=True, timeout=120)
        lines = [l for l in p.stderr.splitlines() if l.strip()]
        assert p.returncode == 4 and len(lines) == 1, p.stderr  # 4: a device failure
        assert lines[0].startswith("edgesmith: error: device 'phone': disk full: the push needs ")
        assert "and the device has 4.0 MiB free at /data/local/tmp/small-disk/bundles/" in lines[0], lines[0]
        left = [f for f in here.rglob("*") if f.is_file()]
        assert not left, left
        # a disk with no room at all (not even for the push lock): still one line, disk full
        with open(here / "filler", "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        p = subprocess.run([sys.executable, "-m", "edgesmith", "run", str(arm64_bundle), "--device", "phone",
                            "--devices", str(inventory), "--tokens", PROMPT, "-n", "2"],
                           capture_output=True, text=True, timeout=120)
        lines = [l for l in p.stderr.splitlines() if l.strip()]
        assert p.returncode == 4 and len(lines) == 1, p.stderr  # 4: a device failure
        assert lines[0].startswith("edgesmith: error: device 'phone': disk full: the device has 0 KiB free at "), \
            lines[0]
        assert {f.name for f in here.rglob("*") if f.is_file()} == {"filler"}


@pytest.mark.parametrize("name", ["board", "phone"])
def test_disk_that_fills_up_mid_push_is_named(devices, emulators, arm64_bundle, name):
    """Room for the bundle when the push starts; then something else takes the rest of the disk
    (the test, once the first file is through). The device's own error (adbd: FAIL "write failed:
    No space left on device"; sftp: Failure) becomes one line saying disk full, with the free space;
    the partial file is gone and nothing is half-written under a final name."""
    from edgesmith.runtime.push import push_bundle
    from edgesmith.runtime.transports.base import Deadline

    device, here = _small_disk_device(devices, emulators, name)
    with tmpfs(here, "16m"):
        def fill(rel):
            if not (here / "filler").exists():
                with open(here / "filler", "wb") as f, contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * (1 << 20))
                        f.flush()

        with open_transport(device) as t:
            home = t.home()
            dest = f"{home.rstrip('/')}/{device.workdir}" if name == "board" else device.workdir
            dest += "/bundles/x"
            with pytest.raises(DeviceError) as info:
                push_bundle(t, arm64_bundle, dest, deadline=Deadline(120), on_file=fill)
        message = str(info.value)
        assert message.startswith(f"device '{name}': disk full during the push of "), message
        assert "the device has 0 KiB free at " in message and "\n" not in message, message
        if name == "phone":
            assert "No space left on device" in message, message
        # under a final name: only whole files; under a temporary: only whole files too (the one
        # the disk could not take was removed)
        manifest = json.loads((arm64_bundle / "manifest.json").read_text())
        whole = {m["sha256"] for m in manifest["files"].values()}
        root = here / "bundles" / "x"
        for f in (p for p in root.rglob("*") if p.is_file()):
            rel = f.relative_to(root).as_posix()
            assert rel != "manifest.json"
            assert _sha(f) in whole, f"{rel} is not a whole file of the bundle"


# ---------------------------------------------------------------- adb: a server killed mid-push

def _adb_processes(port: int) -> list[tuple[int, str]]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"adb") and (str(port).encode() in b" ".join(cmd)):
            found.append((int(proc.name), b" ".join(cmd).decode(errors="replace")))
    return found


def test_adb_server_killed_mid_push_leaves_nothing_running(emulators, arm64_bundle, fault, tmp_path):
    """A phone on a port where no adb server runs: edgesmith starts its own (a child it tracks).
    The server is killed while the push is under way: one line saying so, and afterwards no adb
    process of that port is left: none of the adb calls that follow (releasing the push lock,
    asking for free space) started a daemon of its own."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = tmp_path / "home"
    home.mkdir()
    entry = {"name": "phone", "transport": "adb", "target": "android-arm64", "workdir": "/data/local/tmp/killed",
             "exec_wrapper": ["qemu-aarch64-static"],
             "adb": {"serial": f"127.0.0.1:{emulators['ports']['adb_device']}", "server_port": port}}
    inventory = tmp_path / "devices.yaml"
    inventory.write_text(json.dumps({"devices": [entry]}))
    folder = Path(emulators["state_dir"]) / "phone" / "killed"
    shutil.rmtree(folder, ignore_errors=True)
    fault("phone", "stall", 2_000_000)  # the push stops about 2 MB in, and stays there
    p = subprocess.Popen([sys.executable, "-m", "edgesmith", "run", str(arm64_bundle), "--device", "phone",
                          "--devices", str(inventory), "--tokens", PROMPT, "-n", "2", "--timeout", "120"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "HOME": str(home), "TMPDIR": str(home)})
    try:
        end = time.monotonic() + 60
        while not list(folder.rglob("*.partial")) and time.monotonic() < end and p.poll() is None:
            time.sleep(0.1)  # until the push is under way (its first temporary exists)
        servers = [pid for pid, cmd in _adb_processes(port) if "nodaemon server" in cmd]
        assert len(servers) == 1, _adb_processes(port)
        os.kill(servers[0], signal.SIGKILL)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    lines = [l for l in err.splitlines() if l.strip()]
    assert p.returncode == 4 and len(lines) == 1, err  # 4: a device failure
    assert lines[0].startswith("edgesmith: error: device 'phone': the adb server on port "), lines[0]
    time.sleep(1)  # what a later adb call would have started has had time to show up
    assert _adb_processes(port) == [], "an adb process outlived edgesmith"
