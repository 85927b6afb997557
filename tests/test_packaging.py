"""A fresh machine has what the package needs: every third-party import is declared in
pyproject.toml, and a non-editable install (a wheel, not this checkout) runs from any folder with
the files the code reads by path (the shipped devices.yaml, the runner's sources)."""
from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("edgesmith", "compiler", "targets", "runtime")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_norm(re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0]) for req in project["dependencies"]}


def _imports() -> dict[str, str]:
    """{top-level module: first file:line importing it} over the package's own sources."""
    found: dict[str, str] = {}
    for folder in PACKAGE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_third_party_import_is_a_declared_dependency():
    dists = importlib.metadata.packages_distributions()
    declared = _declared()
    undeclared = []
    for module, where in _imports().items():
        if module in sys.stdlib_module_names or module == "edgesmith":
            continue
        owners = dists.get(module)
        assert owners, f"{where} imports {module!r}, which no installed distribution provides"
        if not any(_norm(d) in declared for d in owners):
            undeclared.append(f"{where}: {module} (distribution {', '.join(owners)})")
    assert not undeclared, "imported but not in [project] dependencies:\n" + "\n".join(undeclared)


def test_the_walk_sees_the_imports_it_must_judge():
    # The check above is only worth something if it finds the package's real third-party imports.
    found = _imports()
    for module in ("tvm", "numpy", "paramiko", "yaml"):
        assert module in found


def _source_packages() -> set[str]:
    """Every package the four source roots hold (a folder with an __init__.py), by its installed name."""
    found = set()
    for package, folder in zip(("edgesmith", "edgesmith.compiler", "edgesmith.targets", "edgesmith.runtime"),
                               PACKAGE_DIRS):
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            if "__pycache__" not in rel.parts:
                found.add(".".join([package, *rel.parts]))
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel of this checkout, built from a copy of it (setuptools writes build/ and *.egg-info)."""
    import shutil

    tmp = tmp_path_factory.mktemp("wheel-build")
    wheel_dir = tmp / "wheels"
    # a copy of the checkout: setuptools builds in the source folder (build/, *.egg-info)
    src = tmp / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "dist", "build", "*.egg-info", "__pycache__", ".pytest_cache", "bench"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), str(src)], check=True, capture_output=True, text=True)
    return next(wheel_dir.glob("edgesmith-*.whl"))


def test_the_wheel_holds_every_package(wheel):
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    packages = _source_packages()
    assert "edgesmith.runtime.tune" in packages and "edgesmith.compiler.models.phi3" in packages  # the walk works
    missing = sorted(p for p in packages if p.replace(".", "/") + "/__init__.py" not in names)
    assert not missing, f"packages the wheel leaves out: {missing}"


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A venv holding a wheel of this checkout (not an editable install); its dependencies come
    from the test environment's site-packages through a .pth line, so nothing is downloaded."""
    tmp = tmp_path_factory.mktemp("wheel-install")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, text=True)
    # Dependencies: the test venv's site-packages, after the new venv's own (whose edgesmith wins).
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def _run(venv: Path, cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("EDGESMITH_DEVICES", "PYTHONPATH")}
    return subprocess.run([str(venv / "bin" / "edgesmith"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_installed_package_is_not_this_checkout(installed, tmp_path):
    probe = subprocess.run([str(installed / "bin" / "python"), "-c",
                            "import edgesmith.runtime.devices as d; print(d.__file__); print(d.SHIPPED.read_text())"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert str(ROOT) not in probe.splitlines()[0], probe
    assert "name: host" in probe  # the shipped devices.yaml is in the wheel


@pytest.mark.slow
def test_installed_package_compiles_and_runs_from_another_folder(installed, tmp_path):
    targets = _run(installed, tmp_path, "targets")
    assert targets.returncode == 0, targets.stderr
    assert "host" in targets.stdout and "arm64-linux" in targets.stdout
    devices = _run(installed, tmp_path, "devices", "--no-probe")
    assert devices.returncode == 0 and "arm64-qemu" in devices.stdout, devices.stderr
    done = _run(installed, tmp_path, "compile", "random:tiny", "--quant", "q4f16", "-o", "b", "-q")
    assert done.returncode == 0, done.stderr
    run = _run(installed, tmp_path, "run", "b", "--tokens", "1,2,3", "-n", "4", "--json")
    assert run.returncode == 0, run.stderr
    assert len(__import__("json").loads(run.stdout)["output_ids"]) == 4
    # the runner was built from the installed sources, which must hold the build script too
    assert any(Path(installed).rglob("build-on-device.sh"))


def test_every_module_of_the_installed_package_imports(installed, tmp_path):
    """From another folder, the installed package (not this checkout) imports every module the
    sources have: a subpackage or module left out of the wheel fails here by name."""
    sources = set()
    for package, folder in zip(("edgesmith", "edgesmith.compiler", "edgesmith.targets", "edgesmith.runtime"),
                               PACKAGE_DIRS):
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            if "__pycache__" not in rel.parts and rel.name != "__main__":
                parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
                sources.add(".".join([package, *parts]))
    code = ("import importlib, json, sys\nbad = {}\nfor m in json.loads(sys.argv[1]):\n"
            "    try:\n        mod = importlib.import_module(m)\n"
            "        assert sys.argv[2] not in (mod.__file__ or ''), mod.__file__\n"
            "    except BaseException as e:\n        bad[m] = f'{type(e).__name__}: {e}'\nprint(json.dumps(bad))")
    out = subprocess.run([str(installed / "bin" / "python"), "-c", code, __import__("json").dumps(sorted(sources)),
                          str(ROOT)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert __import__("json").loads(out.stdout) == {}


@pytest.mark.slow
def test_every_subcommand_from_the_wheel(installed, tmp_path):
    """Every subcommand's --help, then one real command from each subcommand's module, tune on the
    host and compile --tuning auto included, run from the installed package in another folder."""
    import json

    top = _run(installed, tmp_path, "--help")
    assert top.returncode == 0, top.stderr
    listing = top.stdout.split("positional arguments:", 1)[1].split("options:", 1)[0]
    commands = re.findall(r"^    ([a-z]+)\b", listing, flags=re.M)
    assert {"compile", "tune", "run", "profile", "farm", "emulators"} <= set(commands), commands
    for command in commands:
        helped = _run(installed, tmp_path, command, "--help")
        assert helped.returncode == 0 and "usage:" in helped.stdout, (command, helped.stderr)
    for action in ("run", "agent", "status"):
        helped = _run(installed, tmp_path, "farm", action, "--help")
        assert helped.returncode == 0, (action, helped.stderr)

    tuned = _run(installed, tmp_path, "tune", "random:tiny", "--device", "host", "--budget", "1", "-o", "t.json")
    assert tuned.returncode == 0, tuned.stderr
    assert json.loads((tmp_path / "t.json").read_text())["fingerprint"]
    done = _run(installed, tmp_path, "compile", "random:tiny", "--quant", "q4f16", "--tuning", "auto",
                "--device", "host", "-o", "b", "-q")
    assert done.returncode == 0, done.stderr
    profiled = _run(installed, tmp_path, "profile", "b", "-p", "8", "-n", "4", "-r", "1", "--max-reps", "1",
                    "--kernels", "0", "--cool-below", "off", "-q", "--format", "json")
    assert profiled.returncode == 0, profiled.stderr
    (tmp_path / "p.json").write_text(profiled.stdout)
    for args in (["inspect", "b"], ["quants"], ["tokenizer", "show"], ["emulators", "status"],
                 ["compare", "p.json", "p.json"], ["run", "b", "--tokens", "1,2", "-n", "2"]):
        ran = _run(installed, tmp_path, *args)
        assert ran.returncode in (0, 1) and "internal error" not in ran.stderr and "Traceback" not in ran.stderr, \
            (args, ran.stdout[-2000:], ran.stderr[-2000:])
