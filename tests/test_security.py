"""Security: host keys are never accepted blindly; names, paths and arguments reach the device
literally (nothing extra runs); keys and passwords never show in errors or logs."""
from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from edgesmith.runtime.session import run_bundle
from edgesmith.runtime.transports import DeviceError, HostKeyError, open_transport

from emulated_fixtures import *  # noqa: F401,F403
from emulated_fixtures import TOKENS, needs_sshd, pytestmark_emulated

pytestmark = [pytest.mark.slow]  # each test's skip condition is what it uses (the SSH ones: only sshd)


def evil(canaries: Path, tag: str) -> str:
    """A string that runs `touch` if any shell ever interprets it."""
    c = canaries
    return (f"a b;touch {c}/{tag}1 $(touch {c}/{tag}2) `touch {c}/{tag}3` 'q' \"dq\" \\ "
            f"\nnl && touch {c}/{tag}4 | x & y > {c}/{tag}5 $HOME *")


# For names, which cannot hold '/': the canaries land in whatever folder a shell would run in.
EVIL_NAME = "n ;touch es-canary1 $(touch es-canary2) `touch es-canary3` 'q' \"d\" \\ \nx & touch es-canary4 *"


def assert_nothing_ran(canaries: Path, *folders: Path) -> None:
    assert sorted(p.name for p in canaries.iterdir()) == [], "an injected command ran"
    for folder in (Path.cwd(), *folders):
        assert not list(Path(folder).rglob("es-canary*")), f"an injected command ran in {folder}"


@pytest.fixture
def canaries():
    folder = Path(tempfile.mkdtemp(prefix="esc", dir="/tmp"))  # short: it goes into file names
    yield folder
    shutil.rmtree(folder)


def with_ssh(device, **changes):
    return dataclasses.replace(device, settings=dataclasses.replace(device.settings, **changes))


def host_fingerprint(status) -> str:
    """The board's host key fingerprint, as ssh-keygen (not our code) computes it."""
    pub = Path(status["state_dir"]) / "ssh" / "host_ed25519.pub"
    return subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout.split()[1]


# ------------------------------------------------------------------ host keys

@needs_sshd
def test_unknown_host_key_is_refused(board_device, tmp_path, monkeypatch):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyError, match=r"^device 'board': host key SHA256:\S+ for \[127.0.0.1\]:\d+ is unknown"):
        open_transport(with_ssh(board_device, known_hosts=empty)).run("true", timeout=10)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/known_hosts at all: still refused
    with pytest.raises(HostKeyError, match="is unknown"):
        open_transport(with_ssh(board_device, known_hosts=None)).run("true", timeout=10)


@needs_sshd
def test_changed_host_key_is_refused(board_device, board_emulator, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{board_emulator['ports']['ssh']} "
                     f"{' '.join(other.with_suffix('.pub').read_text().split()[:2])}\n")
    with pytest.raises(HostKeyError) as info:
        open_transport(with_ssh(board_device, known_hosts=known)).run("true", timeout=10)
    assert str(info.value).startswith("device 'board': host key for 127.0.0.1:")
    assert f"the server offers {host_fingerprint(board_emulator)}" in str(info.value) and "changed" in str(info.value)


@needs_sshd
def test_pinned_host_key(board_device, board_emulator, tmp_path):
    pinned = host_fingerprint(board_emulator)
    board = with_ssh(board_device, known_hosts=None, host_key=pinned)
    assert open_transport(board).run(["echo", "pinned"], timeout=10).stdout == "pinned\n"
    wrong = "SHA256:" + ("A" * 43)
    with pytest.raises(HostKeyError, match=r"does not match the pinned ssh.host_key SHA256:A{43}"):
        open_transport(with_ssh(board, host_key=wrong)).run("true", timeout=10)


# ------------------------------------------------------------------ literal pass-through

@pytestmark_emulated
@pytest.mark.parametrize("name", ["host", "board", "phone"])
def test_arguments_pass_through_literally(devices, canaries, name):
    text = evil(canaries, "arg")
    with open_transport(devices[name]) as t:
        result = t.run(["printf", "%s", text], timeout=20)
    assert result.exit_code == 0 and result.stdout == text
    assert_nothing_ran(canaries)


@pytestmark_emulated
@pytest.mark.parametrize("name", ["board", "phone"])
def test_file_names_pass_through_literally(devices, emulators, canaries, tmp_path, name):
    local = tmp_path / "we ird;$(x) 'q'.bin"
    local.write_bytes(b"payload\n")
    folder = "edgesmith" if name == "board" else "/data/local/tmp/edgesmith"
    remote = f"{folder}/{EVIL_NAME}.bin"
    with open_transport(devices[name]) as t:
        t.run(["mkdir", "-p", folder], timeout=10)
        t.push(local, remote, timeout=20)
        assert t.run(["cat", remote], timeout=10).stdout == "payload\n"
        t.pull(remote, tmp_path / "back", timeout=20)
        t.run(["rm", "-f", remote], timeout=10)
    assert (tmp_path / "back").read_bytes() == b"payload\n"
    assert_nothing_ran(canaries, tmp_path, emulators["state_dir"])


@pytestmark_emulated
@pytest.mark.parametrize("name", ["board", "phone"])
def test_bundle_and_workdir_names_pass_through_literally(devices, emulators, arm64_bundle, canaries, tmp_path,
                                                         name):
    bundle = tmp_path / EVIL_NAME
    shutil.copytree(arm64_bundle, bundle)
    base = "edgesmith" if name == "board" else "/data/local/tmp/edgesmith"
    device = dataclasses.replace(devices[name], workdir=f"{base}/{EVIL_NAME}")
    records = run_bundle(device, bundle, ["generate", "--tokens", TOKENS, "-n", "3"], timeout=60)
    assert len(records[-1]["output_ids"]) == 3
    with pytest.raises(DeviceError):  # arguments too: the runner gets the string and refuses it
        run_bundle(device, bundle, ["generate", "--tokens", TOKENS, "-n", "3", "--stop-ids",
                                    evil(canaries, "argv")], timeout=60)
    with open_transport(device) as t:  # leave the sandbox as it was
        t.run(["rm", "-rf", device.workdir], timeout=20)
    assert_nothing_ran(canaries, tmp_path, emulators["state_dir"])


# ------------------------------------------------------------------ secrets

@needs_sshd
def test_password_never_shows(board_device, monkeypatch, caplog):
    secret = "pa55-w0rd;$(not-run)-XYZZY"
    monkeypatch.setenv("EDGESMITH_TEST_SECRET", secret)
    board = with_ssh(board_device, key_file=None, password_env="EDGESMITH_TEST_SECRET")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DeviceError) as info:
        open_transport(board).run("true", timeout=10)
    assert str(info.value).startswith("device 'board': authentication as ")
    assert secret not in str(info.value) and secret not in repr(board) and secret not in caplog.text
    assert "XYZZY" not in caplog.text


@needs_sshd
def test_private_keys_never_show(board_device, board_emulator, tmp_path, caplog):
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DeviceError) as info:  # a key the board does not know
        open_transport(with_ssh(board_device, key_file=stranger)).run("true", timeout=10)
    assert str(info.value) == f"device 'board': authentication as {board_device.settings.user!r} with key {stranger} " \
                              "was refused"
    with open_transport(board_device) as t:  # and the right key, logged at DEBUG
        t.run("true", timeout=10)
    own = Path(board_emulator["state_dir"]) / "ssh" / "client_ed25519"
    for key in (stranger, own):
        body = [l for l in key.read_text().splitlines() if l and not l.startswith("-----")]
        for line in body:
            assert line not in caplog.text and line not in str(info.value)
