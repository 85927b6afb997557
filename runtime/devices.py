"""devices.yaml: the device inventory, validated field by field.

    devices:
      - name: board                 # unique; what --device NAME picks
        transport: ssh              # local | ssh | adb (runtime/transports/: one file each)
        target: arm64-linux         # a target preset (`edgesmith targets`)
        workdir: edgesmith          # where bundles go on the device (ssh: relative to the login dir)
        exec_wrapper: [qemu-aarch64-static, -L, /usr/aarch64-linux-gnu]   # optional: emulated devices
        tags: [arm64, emulated]
        ssh: {host: 127.0.0.1, port: 2222, user: me, key_file: ~/.ssh/id_ed25519,
              host_key: "SHA256:...",          # pinned fingerprint, or
              known_hosts: ~/.ssh/known_hosts} # (the default) a known_hosts file
      - name: phone
        transport: adb
        target: android-arm64
        adb: {serial: 127.0.0.1:5557, server_port: 5037}

Which file: the `path` argument, else $EDGESMITH_DEVICES, else ./devices.yaml, else the one shipped
with edgesmith. Paths expand `~` and environment variables; $EDGESMITH_STATE defaults to the
emulated devices' state folder (~/.cache/edgesmith/emulated), so the shipped file names their keys.
Every error is one line naming the file, the device and the field. A transport's own section
(ssh:, adb:) is read by the transport's file, with the same Fields.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgesmith.errors import ConfigError, EdgesmithError
from edgesmith.targets.cache import cache_root

SHIPPED = Path(__file__).parent / "devices.yaml"  # a link to the top-level devices.yaml; a copy when installed
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def emulated_state_dir() -> Path:
    """Where the emulated devices keep their keys, ports and sandboxes."""
    env = os.environ.get("EDGESMITH_STATE")
    return Path(env) if env else cache_root() / "emulated"


@dataclass(frozen=True)
class Device:
    name: str
    transport: str
    target: str
    workdir: str
    tags: tuple[str, ...] = ()
    exec_wrapper: tuple[str, ...] = ()
    settings: Any = None  # its transport's devices.yaml section, read by the transport's file (ssh:, adb:)
    description: str = ""

    @property
    def emulated(self) -> bool:
        return bool(self.exec_wrapper)

    @property
    def where(self) -> str:
        """How the device is reached, for tables and messages (no secrets)."""
        return self.settings.where if self.settings is not None else self.transport


# ---------------------------------------------------------------- validation

class Fields:
    """Reads one mapping, naming the device and the field in every error."""

    def __init__(self, source: str, device: str, data: dict, prefix: str = ""):
        self.source, self.device, self.data, self.prefix = source, device, data, prefix
        self.used: set[str] = set()

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: device {self.device}: field '{self.prefix}{key}' {message}")

    def get(self, key: str, kind, default=..., *, expand: bool = False):
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            if default is ...:
                raise self.fail(key, "is missing")
            return default
        value = self.data[key]
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(key, f"must be an integer, got {value!r}")
        elif kind is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise self.fail(key, f"must be a string, got {type(value).__name__} {value!r}")
            value = str(value)
            if not value.strip():
                raise self.fail(key, "is empty")
            if CONTROL.search(value):  # a newline or NUL would split messages and commands
                raise self.fail(key, f"holds a control character: {value!r}")
            if expand:
                value = expand_path(value)
        elif kind is list:
            if isinstance(value, str):
                value = value.split()
            if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
                raise self.fail(key, f"must be a list of strings, got {value!r}")
            value = tuple(str(v) for v in value)
            if any(CONTROL.search(v) for v in value):
                raise self.fail(key, f"holds a control character: {list(value)!r}")
        return value

    def port(self, key: str, default=...) -> int:
        port = self.get(key, int, default)
        if not 1 <= port <= 65535:
            raise self.fail(key, f"must be a port number 1-65535, got {port}")
        return port

    def section(self, key: str) -> Fields:
        self.used.add(key)
        value = self.data.get(key)
        if value is None:
            raise self.fail(key, f"is missing (transport {self.data.get('transport')} needs it)")
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a mapping, got {type(value).__name__}")
        return Fields(self.source, self.device, value, f"{self.prefix}{key}.")

    def no_extra(self) -> None:
        extra = sorted(set(map(str, self.data)) - self.used)
        if extra:
            raise self.fail(extra[0], f"is not a known field (known: {', '.join(sorted(self.used))})")


def expand_path(value: str) -> str:
    env = dict(os.environ)
    env.setdefault("EDGESMITH_STATE", str(emulated_state_dir()))
    value = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), m.group(0)), value)
    return os.path.expanduser(value)


def opt_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _settings(f: Fields, entry, label: str):
    """The transport's section, read by the transport's own file (None: it takes none)."""
    if not entry.section:
        return None
    from edgesmith.runtime.transports.base import DeviceError

    try:
        return entry.read_settings(f.section(entry.section), label)
    except DeviceError as err:  # the transport's file cannot load: say so as the file's problem
        raise ConfigError(f"{f.source}: device {label}: {err.detail}") from None


def _device(source: str, index: int, data) -> Device:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: device #{index + 1}: must be a mapping of fields, got {data!r}")
    label = f"'{data['name']}'" if isinstance(data.get("name"), str) else f"#{index + 1}"
    f = Fields(source, label, data)
    name = f.get("name", str)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise f.fail("name", f"must be letters, digits, '.', '_' or '-', got {name!r}")
    transport = f.get("transport", str)
    from edgesmith.runtime.transports import TRANSPORTS

    entry = TRANSPORTS.get(transport)
    if entry is None:
        raise f.fail("transport", f"must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    target = f.get("target", str)
    from edgesmith.targets.presets import PRESETS

    if target not in PRESETS:
        raise f.fail("target", f"names no target preset: {target!r} (known: {', '.join(PRESETS)})")
    device = Device(
        name=name,
        transport=transport,
        target=target,
        workdir=f.get("workdir", str, entry.workdir or str(cache_root() / "devices" / name), expand=entry.in_place),
        tags=f.get("tags", list, ()),
        exec_wrapper=f.get("exec_wrapper", list, ()),
        description=f.get("description", str, ""),
        settings=_settings(f, entry, label),
    )
    for other in TRANSPORTS.values():
        if other.section and other.section != entry.section and other.section in data:
            raise f.fail(other.section, f"belongs to transport {other.name}, and this device's transport is "
                                        f"{transport}")
    f.no_extra()
    return device


def parse_devices(data, source: str = "devices.yaml") -> dict[str, Device]:
    if isinstance(data, dict) and set(data) <= {"devices"}:
        data = data.get("devices")
    if not isinstance(data, list):
        raise ConfigError(f"{source}: expected `devices:` followed by a list of devices")
    devices: dict[str, Device] = {}
    for i, item in enumerate(data):
        device = _device(source, i, item)
        if device.name in devices:
            raise ConfigError(f"{source}: device '{device.name}': field 'name' is a duplicate "
                              f"(devices #{list(devices).index(device.name) + 1} and #{i + 1})")
        devices[device.name] = device
    return devices


def devices_path(path: Path | None = None) -> Path:
    if path is not None:
        return Path(path)
    if os.environ.get("EDGESMITH_DEVICES"):
        return Path(os.environ["EDGESMITH_DEVICES"])
    local = Path("devices.yaml")
    return local if local.is_file() else SHIPPED


def load_devices(path: Path | None = None) -> dict[str, Device]:
    import yaml

    path = devices_path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read devices file {path}: {err.strerror}; pass another with "
                          "EDGESMITH_DEVICES or create ./devices.yaml") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        if isinstance(err, yaml.reader.ReaderError):  # a byte YAML never allows (NUL, other controls)
            where = f" at line {text.count(chr(10), 0, err.position) + 1}"
            code = err.character if isinstance(err.character, int) else ord(err.character)
            problem = (f"{'a NUL byte' if code == 0 else f'character U+{code:04X}'} is not allowed there; "
                       "devices.yaml must be plain text")
        else:
            problem = getattr(err, "problem", None) or err
        raise ConfigError(f"{path}: not valid YAML{where} ({' '.join(str(problem).split())})") from None
    return parse_devices(data, str(path))


def get_device(name: str, path: Path | None = None) -> Device:
    devices = load_devices(path)
    try:
        return devices[name]
    except KeyError:
        from edgesmith.errors import unknown_name

        said = unknown_name("device", name, devices)  # "unknown device 'x'; did you mean 'y'? known: ..."
        hint = said.split(" known: ")[0].removeprefix(f"unknown device '{name}'")
        raise EdgesmithError(f"no device '{name}' in {devices_path(path)}{hint}; known: {', '.join(devices)}") from None
