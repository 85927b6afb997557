"""Transports against real servers: the board through a real OpenSSH sshd (paramiko), the phone
through the real adb server; the reference is the host running its own bundle natively."""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import threading
import time

import pytest

from edgesmith.runtime.devices import Device, parse_devices
from edgesmith.runtime.probe import format_devices_table, probe_devices
from edgesmith.runtime.session import push_to_device, run_bundle
from edgesmith.runtime.session import run_runner
from edgesmith.runtime.transports import DeviceError, open_transport

from emulated_fixtures import *  # noqa: F401,F403
from emulated_fixtures import TOKENS, device_dir, device_files, pytestmark_emulated, sandbox, wipe

pytestmark = [pytestmark_emulated, pytest.mark.slow]
GENERATE = ["generate", "--tokens", TOKENS, "-n", "12"]


@pytest.fixture(scope="module")
def host_tokens(host_bundle):
    """The reference: the host bundle run by TVM's Python VM in this process (runtime/engine.py),
    not by a runner the transports start."""
    from edgesmith.runtime.engine import Engine

    return Engine(host_bundle).generate([int(t) for t in TOKENS.split(",")], 12).output_ids


def test_same_tokens_on_board_phone_and_host(devices, arm64_bundle, host_tokens, emulators):
    for name in ("board", "phone"):
        wipe(emulators, name)
    got = {name: run_bundle(devices[name], arm64_bundle, GENERATE, timeout=120)[-1]["output_ids"]
           for name in ("board", "phone", "arm64-qemu")}
    assert got == {"board": host_tokens, "phone": host_tokens, "arm64-qemu": host_tokens}
    # and it really ran there: the bundle sits in each device's sandbox, complete
    for name in ("board", "phone"):
        assert device_files(emulators, name, arm64_bundle)["lib/model.so"] == \
            hashlib.sha256((arm64_bundle / "lib/model.so").read_bytes()).hexdigest()


def test_host_runs_in_place(devices, host_bundle, host_tokens):
    assert run_bundle(devices["host"], host_bundle, GENERATE, timeout=60)[-1]["output_ids"] == host_tokens


@pytest.mark.parametrize("name", ["board", "phone"])
def test_push_is_incremental(devices, arm64_bundle, emulators, name):
    device = devices[name]
    wipe(emulators, name)
    t0 = time.monotonic()
    first = push_to_device(device, arm64_bundle, timeout=60)
    full = time.monotonic() - t0
    files = len(first.sent)
    assert files == len(list(p for p in arm64_bundle.rglob("*") if p.is_file()))
    t0 = time.monotonic()
    again = push_to_device(device, arm64_bundle, timeout=60)
    print(f"\n{name}: full push {full:.2f} s ({first.bytes_sent / 1e6:.1f} MB), "
          f"no-change push {time.monotonic() - t0:.2f} s")
    assert again.sent == [] and again.skipped == files
    # A file changed on the device and one deleted: exactly those two go again (and the manifest,
    # which is rewritten last whenever anything changes).
    root = device_dir(emulators, name, arm64_bundle)
    (root / "params/params_shard_0.bin").write_bytes(b"stale")
    (root / "bin/runner").unlink()
    fixed = push_to_device(device, arm64_bundle, timeout=60)
    assert sorted(fixed.sent) == ["bin/runner", "manifest.json", "params/params_shard_0.bin"]
    assert not [f for f in device_files(emulators, name, arm64_bundle) if f.endswith(".partial")]
    assert run_bundle(device, arm64_bundle, GENERATE, timeout=60)[-1]["stop_reason"]


@pytest.mark.parametrize("name", ["board", "phone"])
def test_a_rebuilt_bundle_reuses_what_the_device_holds(devices, arm64_bundle, emulators, tmp_path, name):
    """A bundle whose manifest changed and nothing else (`compile --eval` adds its result) has a
    folder of its own on the device, made of the first one's files (hard links: the same inodes),
    and only its manifest is sent."""
    push_to_device(devices[name], arm64_bundle, timeout=60)
    again = tmp_path / arm64_bundle.name
    shutil.copytree(arm64_bundle, again)
    manifest = json.loads((again / "manifest.json").read_text())
    manifest["eval"] = {"positions": 8, "top1_agreement": 1.0, "mean_kl": 0.0, "max_abs_diff": 0.0}
    (again / "manifest.json").write_text(json.dumps(manifest))
    report = push_to_device(devices[name], again, timeout=60)
    assert report.sent == ["manifest.json"] and len(report.reused) == len(manifest["files"]), report
    old, new = device_dir(emulators, name, arm64_bundle), device_dir(emulators, name, again)
    assert old != new
    for rel in manifest["files"]:
        assert (new / rel).stat().st_ino == (old / rel).stat().st_ino, rel
    assert run_bundle(devices[name], again, GENERATE, timeout=60)[-1]["stop_reason"] == "length"
    shutil.rmtree(new)


@pytest.mark.parametrize("name", ["board", "phone", "host"])
def test_run_streams_lines_and_keeps_stderr_and_exit_code(devices, emulators, tmp_path, name):
    """Streamed, not delivered at the end: the command prints "one", then waits until our callback,
    having seen "one", makes a file it looks for; only then does it print "two"."""
    if name == "host":
        here, there = tmp_path / "seen-one", str(tmp_path / "seen-one")
    else:
        here = sandbox(emulators, name) / "seen-one"
        there = ("edgesmith" if name == "board" else "/data/local/tmp/edgesmith") + "/seen-one"
    here.parent.mkdir(parents=True, exist_ok=True)
    here.unlink(missing_ok=True)
    lines = []

    def on_line(line):
        lines.append(line)
        if line == "one":
            here.write_text("")

    wait = (f"i=0; while [ ! -e {there} ] && [ $i -lt 300 ]; do sleep 0.05; i=$((i+1)); done; "
            f"[ -e {there} ] && echo two || echo late")
    with open_transport(devices[name]) as t:
        result = t.run(f"echo one; {wait}; echo oops >&2; exit 7", timeout=60, on_line=on_line)
    here.unlink(missing_ok=True)
    assert (result.exit_code, result.stdout, result.stderr) == (7, "one\ntwo\n", "oops\n")
    assert lines == ["one", "two"]


def test_runner_records_stream_as_they_come(devices, arm64_bundle):
    """Streamed through adb, not delivered at exit: in a conversation the runner cannot end before
    its input does, and the input ends (an empty line, then end of input) only once the first
    token's record has come back. A runner or link that held the lines until the end would never
    show one: the wait runs out."""
    from edgesmith.runtime.transports.base import StdinFeed

    first, waited, seen = threading.Event(), [], []

    def on_line(record):
        seen.append(record)
        if "token" in record:
            first.set()

    def turns():
        yield (TOKENS + "\n").encode()
        waited.append(first.wait(50))
        yield b"\n"

    records = run_bundle(devices["phone"], arm64_bundle, ["generate", "--interactive", "--stream", "-n", "5"],
                         timeout=60, on_line=on_line, stdin=StdinFeed(turns()))
    assert waited == [True], "no token record came before the runner's input ended"
    assert seen == records
    assert [r["token"] for r in records if "token" in r] == records[-1]["output_ids"]


@pytest.mark.parametrize("name", ["board", "phone"])
def test_push_pull_round_trip(devices, emulators, tmp_path, name):
    src = tmp_path / "blob"
    src.write_bytes(bytes(range(256)) * 4099)
    workdir = str(sandbox(emulators, name)).replace(str(emulators["state_dir"]) + "/phone", "/data/local/tmp")
    remote = f"{workdir if name == 'phone' else 'edgesmith'}/blob.bin"
    with open_transport(devices[name]) as t:
        t.run(["mkdir", "-p", remote.rsplit("/", 1)[0]], timeout=10)
        t.push(src, remote, timeout=20)
        t.pull(remote, tmp_path / "back", timeout=20)
    assert (tmp_path / "back").read_bytes() == src.read_bytes()


def test_wrong_bundle_is_refused_before_copying(devices, host_bundle, arm64_bundle, tmp_path):
    with pytest.raises(DeviceError, match=r"^device 'board': runs aarch64 .* bundle is for x86_64 .*"
                                          r"--target arm64-linux$"):
        run_bundle(devices["board"], host_bundle, GENERATE, timeout=30)
    linux = tmp_path / "linux-bundle"  # what an arm64-linux bundle's manifest says
    linux.mkdir()
    manifest = json.loads((arm64_bundle / "manifest.json").read_text())
    manifest["target"].update(preset="arm64-linux", layout="linux")
    (linux / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DeviceError, match=r"^device 'phone': is an Android device .*--target android-arm64$"):
        run_bundle(devices["phone"], linux, GENERATE, timeout=30)


def test_runner_failure_is_one_line(devices, arm64_bundle):
    with pytest.raises(DeviceError) as info:
        run_bundle(devices["board"], arm64_bundle, ["generate", "--tokens", "1,2", "-n", "2", "--bogus"], timeout=60)
    assert str(info.value).startswith("device 'board': runner failed: unknown option '--bogus'")


def test_probe_all_at_once(devices, emulators):
    dead = parse_devices([{"name": "gone", "transport": "ssh", "target": "arm64-linux",
                           "ssh": {"host": "127.0.0.1", "port": emulators["ports"]["ssh"],
                                   "known_hosts": "/dev/null"}},
                          {"name": "lost", "transport": "adb", "target": "android-arm64",
                           "adb": {"serial": "127.0.0.1:1", "server_port": emulators["ports"]["adb_server"]}}])
    with _closed_port() as port:
        dead = {"gone": _with_port(dead["gone"], port), "lost": dead["lost"]}
        t0 = time.monotonic()
        rows = probe_devices([devices[n] for n in ("host", "board", "phone")] + list(dead.values()), timeout=15)
        took = time.monotonic() - t0
    by = {r["name"]: r for r in rows}
    assert [r["name"] for r in rows] == ["host", "board", "phone", "gone", "lost"]
    for name in ("board", "phone"):
        r = by[name]
        assert r["reachable"] and r["error"] is None
        assert r["arch"] == "aarch64" and r["emulated"].startswith("qemu-aarch64-static on x86_64")
        assert r["cores"] >= 1 and r["mem_total_mb"] > r["mem_free_mb"] > 0 and r["storage_free_mb"] > 0
        assert isinstance(r["gpu_apis"], dict) and isinstance(r["thermal"], dict)
    assert by["phone"]["os"] == "Android 14" and by["board"]["os"] != "Android 14"
    assert by["host"]["arch"] == "x86_64" and by["host"]["emulated"] is None
    assert not by["gone"]["reachable"] and by["gone"]["error"].startswith("device 'gone': cannot connect")
    assert not by["lost"]["reachable"] and by["lost"]["error"].startswith("device 'lost': ")
    table = format_devices_table(rows)
    assert "aarch64 (emulated)" in table and "gone: device 'gone': cannot connect" in table
    print(f"\nprobe of 5 devices (2 unreachable) in parallel: {took:.2f} s\n{table}")


@contextlib.contextmanager
def _closed_port():
    """A loopback port that refuses connections for as long as it is held: bound, never listening,
    so no other process can start listening on it meanwhile."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def _with_port(device: Device, port: int) -> Device:
    import dataclasses

    return dataclasses.replace(device, settings=dataclasses.replace(device.settings, port=port))


@pytest.mark.parametrize("name", ["board", "phone", "host"])
def test_run_feeds_stdin_turn_by_turn(devices, name):
    """A conversation's shape: each line goes in only after the answer to the previous one came
    out (the command is still running), then end of input ends it. A wait inside idle() (a person
    typing) is longer than the timeout and does not count against it. The timeout scales with what
    a first command (the connection included) takes on this link now; the idle wait stays above it."""
    from edgesmith.runtime.transports.base import StdinFeed

    with open_transport(devices[name]) as t:
        t0 = time.monotonic()
        t.run("true", timeout=60)
        timeout = max(3.0, 10 * (time.monotonic() - t0))
    answered = threading.Event()
    lines = []

    def on_line(line):
        lines.append(line)
        answered.set()

    def turns():
        for word in ("one", "two words", "three"):
            yield (word + "\n").encode()
            assert answered.wait(20)
            answered.clear()
            if word == "two words":
                with feed.idle():
                    time.sleep(timeout + 1)

    feed = StdinFeed(turns())
    with open_transport(devices[name]) as t:
        result = t.run("while IFS= read -r l; do echo \"got $l\"; done; echo done", timeout=timeout,
                       on_line=on_line, stdin=feed)
    assert result.exit_code == 0, result.stderr
    assert lines == ["got one", "got two words", "got three", "done"]


@pytest.mark.parametrize("name", ["board", "phone"])
def test_interactive_conversation_on_device(devices_yaml, arm64_bundle, host_bundle, name):
    """`run --interactive` on a device: turns typed as ids go to the runner's stdin through sshd /
    adb, the KV cache lives across them; each reply is the host's one-shot generate of the whole
    sequence so far (random:tiny has no tokenizer: lines are token ids)."""
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "edgesmith", "run", str(arm64_bundle), "--device", name, "--devices",
                        str(devices_yaml), "--interactive", "-n", "4", "--json"], input="1,2,3\n4,5\n",
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    t1, t2 = [json.loads(line) for line in p.stdout.splitlines()]

    def generate(ids):
        return run_runner(host_bundle, ["generate", str(host_bundle), "--tokens", ",".join(map(str, ids)), "-n", "4"],
                          timeout=60)[-1]["output_ids"]

    assert t1["prompt_ids"] == [1, 2, 3] and t1["output_ids"] == generate([1, 2, 3])
    assert t2["prompt_ids"] == [t1["output_ids"][-1], 4, 5]
    assert t2["output_ids"] == generate([1, 2, 3, *t1["output_ids"], 4, 5])
    assert t2["context_tokens"] == 3 + 3 + 3 + 3
