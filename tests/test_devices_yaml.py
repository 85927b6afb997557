"""devices.yaml: the shipped inventory loads; every malformed entry is one line naming the device and field."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgesmith.errors import ConfigError, EdgesmithError
from edgesmith.runtime.devices import SHIPPED, get_device, load_devices

BOARD = {"name": "pi", "transport": "ssh", "target": "arm64-linux",
         "ssh": {"host": "10.0.0.7", "port": 22, "user": "pi", "key_file": "~/.ssh/id_ed25519"}}
PHONE = {"name": "pixel", "transport": "adb", "target": "android-arm64", "adb": {"serial": "127.0.0.1:5557"}}


def write(tmp_path: Path, devices) -> Path:
    path = tmp_path / "devices.yaml"
    path.write_text(yaml.safe_dump({"devices": devices}) if not isinstance(devices, str) else devices)
    return path


def with_field(base: dict, dotted: str, value) -> dict:
    entry = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    *parents, key = dotted.split(".")
    node = entry
    for p in parents:
        node = node[p]
    if value is DELETE:
        del node[key]
    else:
        node[key] = value
    return entry


DELETE = object()


def test_shipped_inventory_has_the_host_and_the_emulated_devices(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no ./devices.yaml here: the packaged one
    monkeypatch.delenv("EDGESMITH_DEVICES", raising=False)
    monkeypatch.setenv("EDGESMITH_STATE", "/state")
    devices = load_devices()
    assert list(devices) == ["host", "arm64-qemu", "board", "phone"]
    assert devices["arm64-qemu"].exec_wrapper == ("qemu-aarch64-static", "-L", "/usr/aarch64-linux-gnu")
    assert devices["board"].settings.key_file == Path("/state/ssh/client_ed25519")
    assert devices["board"].settings.port == 2222 and devices["phone"].settings.server_port == 5038
    assert devices["phone"].settings.serial == "127.0.0.1:5557"
    assert devices["host"].exec_wrapper == () and devices["host"].transport == "local"


def test_which_file(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EDGESMITH_DEVICES", raising=False)
    write(tmp_path, [BOARD])
    assert list(load_devices()) == ["pi"]  # ./devices.yaml before the packaged one
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"devices": [PHONE]}))
    monkeypatch.setenv("EDGESMITH_DEVICES", str(other))
    assert list(load_devices()) == ["pixel"]
    assert list(load_devices(SHIPPED))[0] == "host"  # an explicit path wins
    assert get_device("pixel").settings.serial == "127.0.0.1:5557"


def test_defaults(tmp_path):
    devices = load_devices(write(tmp_path, [BOARD, PHONE, {"name": "h", "transport": "local", "target": "host"}]))
    assert devices["pi"].workdir == "edgesmith" and devices["pi"].settings.known_hosts is None
    assert devices["pixel"].workdir == "/data/local/tmp/edgesmith" and devices["pixel"].settings.server_port == 5037
    assert devices["pi"].settings.key_file == Path("~/.ssh/id_ed25519").expanduser()
    assert Path(devices["h"].workdir).is_absolute()


def test_unknown_device_lists_the_known_ones(tmp_path):
    with pytest.raises(EdgesmithError, match=r"no device 'pixle' in .*; known: pi, pixel"):
        get_device("pixle", write(tmp_path, [BOARD, PHONE]))


BAD = [
    ("missing field", [with_field(BOARD, "transport", DELETE)], "device 'pi': field 'transport' is missing"),
    ("missing name", [with_field(BOARD, "name", DELETE)], "device #1: field 'name' is missing"),
    ("missing ssh host", [with_field(BOARD, "ssh.host", DELETE)], "device 'pi': field 'ssh.host' is missing"),
    ("missing ssh section", [with_field(BOARD, "ssh", DELETE)], "device 'pi': field 'ssh' is missing"),
    ("missing adb serial", [with_field(PHONE, "adb.serial", DELETE)], "device 'pixel': field 'adb.serial' is missing"),
    ("wrong type port", [with_field(BOARD, "ssh.port", "twenty-two")],
     "device 'pi': field 'ssh.port' must be an integer, got 'twenty-two'"),
    ("wrong type tags", [with_field(BOARD, "tags", {"a": 1})], "device 'pi': field 'tags' must be a list"),
    ("wrong type name", [with_field(BOARD, "name", ["x"])], "device #1: field 'name' must be a string"),
    ("wrong type ssh", [with_field(BOARD, "ssh", "10.0.0.7")], "device 'pi': field 'ssh' must be a mapping"),
    ("duplicate name", [BOARD, with_field(PHONE, "name", "pi")],
     "device 'pi': field 'name' is a duplicate (devices #1 and #2)"),
    ("unknown transport", [with_field(BOARD, "transport", "telnet")],
     "device 'pi': field 'transport' must be one of local, ssh, adb, got 'telnet'"),
    ("bad port", [with_field(BOARD, "ssh.port", 70000)],
     "device 'pi': field 'ssh.port' must be a port number 1-65535, got 70000"),
    ("zero port", [with_field(PHONE, "adb.server_port", 0)],
     "device 'pixel': field 'adb.server_port' must be a port number 1-65535, got 0"),
    ("bad serial port", [with_field(PHONE, "adb.serial", "127.0.0.1:99999")],
     "device 'pixel': field 'adb.serial' host:port needs a port number"),
    ("unknown target", [with_field(BOARD, "target", "riscv")], "device 'pi': field 'target' names no target preset"),
    ("unknown field", [with_field(BOARD, "hots", "x")], "device 'pi': field 'hots' is not a known field"),
    ("unknown ssh field", [with_field(BOARD, "ssh.pasword", "x")], "device 'pi': field 'ssh.pasword' is not a known"),
    ("other transport's section", [with_field(BOARD, "adb", {"serial": "x"})],
     "device 'pi': field 'adb' belongs to transport adb"),
    ("bad fingerprint", [with_field(BOARD, "ssh.host_key", "MD5:aa:bb")],
     "device 'pi': field 'ssh.host_key' must be a SHA256 fingerprint"),
    ("password in file", [with_field(BOARD, "ssh.password_env", "hunter2 !")],
     "device 'pi': field 'ssh.password_env' must name an environment variable"),
    ("bad name", [with_field(BOARD, "name", "a b;c")], "device 'a b;c': field 'name' must be letters"),
    ("entry not a mapping", ["pi"], "device #1: must be a mapping"),
    ("no list", "devices: {pi: 1}\n", "expected `devices:` followed by a list"),
    ("not yaml", "devices:\n  - name: [pi\n", "not valid YAML at line"),
    ("NUL byte", "devices:\n  - name: p\0i\n    transport: local\n    target: host\n",
     "not valid YAML at line 2 (a NUL byte is not allowed there; devices.yaml must be plain text)"),
    ("newline in ssh.host", [with_field(BOARD, "ssh.host", "10.0.0.7\nevil")],
     "device 'pi': field 'ssh.host' holds a control character: '10.0.0.7\\nevil'"),
    ("option in ssh.host", [with_field(BOARD, "ssh.host", "-oProxyCommand=x y")],
     "device 'pi': field 'ssh.host' must be a host name or an address, got '-oProxyCommand=x y'"),
    ("newline in exec_wrapper", [with_field(BOARD, "exec_wrapper", ["qemu", "-L\n/x"])],
     "device 'pi': field 'exec_wrapper' holds a control character"),
]


@pytest.mark.parametrize("case,devices,message", BAD, ids=[b[0] for b in BAD])
def test_malformed_is_one_line_naming_device_and_field(tmp_path, case, devices, message):
    path = write(tmp_path, devices)
    with pytest.raises(ConfigError) as info:
        load_devices(path)
    text = str(info.value)
    assert message in text
    assert text.startswith(str(path)) and "\n" not in text


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read devices file .*nope.yaml"):
        load_devices(tmp_path / "nope.yaml")
