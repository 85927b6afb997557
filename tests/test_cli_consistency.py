"""One command line: documented exit codes, --version, did-you-mean for mistyped choices,
`emulators status` as a table that exits 0, filled help. No model is compiled here."""
from __future__ import annotations

import subprocess
import sys

import pytest


def edgesmith(*args, env=None):
    return subprocess.run([sys.executable, "-m", "edgesmith", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env)


def test_version_names_edgesmith_and_tvm():
    from importlib.metadata import version

    p = edgesmith("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"edgesmith {version('edgesmith')} (Apache TVM " \
                                                     f"{version('apache-tvm')})"


def test_help_lists_the_exit_codes_and_serve():
    p = edgesmith("--help")
    assert p.returncode == 0
    text = " ".join(p.stdout.split())
    assert "0 ok, 1 error, 2 usage" in text and "4 device failures, 130 interrupted" in text
    assert "serve" in text


@pytest.mark.parametrize("args, suggestion", [
    (["complie", "x"], "did you mean 'compile'?"),
    (["emulators", "stauts"], "did you mean 'status'?"),
    (["run", "b", "--engine", "pyhton"], "did you mean 'python'?"),
])
def test_mistyped_choices_exit_2_with_a_suggestion(args, suggestion):
    p = edgesmith(*args)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and suggestion in lines[0], p.stderr


def test_emulators_status_is_a_table_and_exits_0_when_stopped(tmp_path):
    import os

    env = dict(os.environ, EDGESMITH_STATE=str(tmp_path / "state"))
    p = edgesmith("emulators", "status", env=env)
    assert p.returncode == 0, p.stderr
    rows = p.stdout.splitlines()
    assert rows[0].split() == ["device", "state", "address", "process"]
    assert rows[1].split()[:2] == ["board", "stopped"] and rows[2].split()[:2] == ["phone", "stopped"]
    assert "edgesmith emulators start" in p.stdout
    j = edgesmith("emulators", "status", "--format", "json", env=env)
    assert j.returncode == 0 and '"running": false' in j.stdout


def test_every_help_entry_is_filled():
    """Each subcommand's arguments carry a help text (argparse leaves an entry blank otherwise)."""
    from edgesmith.cli import build_parser

    import argparse

    blank = []

    def walk(parser, path):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    walk(sub, f"{path} {name}")
            if a.help is None and a.dest != "help":
                blank.append(f"{path} {'/'.join(a.option_strings) or a.dest}")

    walk(build_parser(), "edgesmith")
    assert not blank, blank


@pytest.mark.parametrize("args, suggestion", [
    (["run", "b", "--device", "bord", "--tokens", "1"], "did you mean 'board'?"),
    (["compile", "random:tiny", "--target", "android"], "did you mean 'android-arm64'? (or android-opencl"),
    (["compile", "random:tiny", "--target", "hots"], "did you mean 'host'?"),
])
def test_unknown_names_suggest_by_spelling_and_by_word(args, suggestion, tmp_path):
    import os

    env = dict(os.environ, EDGESMITH_DEVICES="")  # the shipped devices.yaml: host, board, phone, ...
    p = subprocess.run([sys.executable, "-m", "edgesmith", *args, *(["-o", str(tmp_path / "o")]
                                                                     if args[0] == "compile" else [])],
                       capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and suggestion in lines[0], p.stderr


def test_an_emulated_device_that_is_down_names_the_command_that_starts_it():
    """A closed port on a device tagged emulated: the one-line error says `edgesmith emulators start`;
    the same device without the tag does not (a real board is not ours to start)."""
    import socket

    from edgesmith.runtime.devices import parse_devices
    from edgesmith.runtime.transports import DeviceError, open_transport

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    for tags, hint in ((["arm64", "emulated"], True), (["arm64"], False)):
        device = parse_devices([{"name": "board", "transport": "ssh", "target": "arm64-linux", "tags": tags,
                                 "ssh": {"host": "127.0.0.1", "port": port, "known_hosts": "/dev/null"}}])["board"]
        with pytest.raises(DeviceError) as err, open_transport(device) as t:
            t.run("true", timeout=10)
        assert err.value.exit_code == 4 and "cannot connect to" in str(err.value)
        assert ("start it with `edgesmith emulators start`" in str(err.value)) == hint, str(err.value)


def test_a_quant_the_target_cannot_honour_is_an_error_naming_what_it_can(tmp_path):
    """int8 activations need int8 dot products: a GPU target (and an x86 CPU without VNNI, as LLVM
    describes its CPUs) refuses q4f16i8 in one line naming the quantizations it honours; plain
    arm64 NEON honours it (emulated dot products, #28). Nothing is written."""
    import tvm
    from edgesmith.compiler.kernels.family import honoured_quants
    from edgesmith.targets.presets import get_preset

    out = tmp_path / "b"
    p = edgesmith("compile", "random:tiny", "--target", "linux-opencl", "--quant", "q4f16i8", "-o", out)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1, p.stderr
    assert "q4f16i8" in lines[0] and "linux-opencl" in lines[0] and "--quant q4f16" in lines[0], lines[0]
    assert "honours q0f32, q0f16, q4f16, q4f32" in lines[0] and not out.exists()

    assert "q4f16i8" in honoured_quants(get_preset("arm64-linux"))
    host = get_preset("host")
    cpu = {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}
    assert "q4f16i8" not in honoured_quants(host, tvm.target.Target(dict(cpu, mcpu="haswell")))
    assert honoured_quants(host, tvm.target.Target(dict(cpu, mcpu="cascadelake")))["q4f16i8"] == \
        "int8 activations on avx512vnni"


def test_o_is_always_an_output_path_and_format_always_a_format(tmp_path):
    """Across every subcommand: -o is --out (a path), --format takes a format and --json is its
    short form; compile's old --output still parses, with a one-line note."""
    import argparse

    from edgesmith.cli import build_parser

    seen = {"-o": [], "--format": [], "--json": []}

    def walk(parser, path):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    walk(sub, f"{path} {name}")
            for flag in seen:
                if flag in a.option_strings:
                    seen[flag].append((path, a))

    walk(build_parser(), "edgesmith")
    assert {p for p, _ in seen["-o"]} >= {"edgesmith compile", "edgesmith tune", "edgesmith profile",
                                          "edgesmith farm run"}
    for path, a in seen["-o"]:
        assert a.option_strings == ["-o", "--out"] and a.dest == "out" and a.type is not None, path
    for path, a in seen["--format"]:
        assert a.choices and all(c in ("table", "text", "json", "md", "jsonl", "csv") for c in a.choices), path
    assert {p for p, _ in seen["--json"]} <= {p for p, _ in seen["--format"]}  # --json only as --format json's short form
    for cmd in ("targets", "quants"):
        a, b = edgesmith(cmd, "--format", "json"), edgesmith(cmd, "--json")
        assert a.returncode == b.returncode == 0 and a.stdout == b.stdout and a.stdout.lstrip().startswith("[")

    p = edgesmith("compile", "random:tiny", "--target", "linux-opencl", "--quant", "q4f16i8", "--output", tmp_path / "b")
    note, error = p.stderr.strip().splitlines()
    assert note == "edgesmith: note: --output is now -o/--out (--output still works, for now)"
    assert p.returncode == 1 and "linux-opencl" in error and not (tmp_path / "b").exists()
