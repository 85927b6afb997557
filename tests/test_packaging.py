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


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv holding a wheel of this checkout (not an editable install); its dependencies come
    from the test environment's site-packages through a .pth line, so nothing is downloaded."""
    import shutil

    tmp = tmp_path_factory.mktemp("wheel-install")
    wheel_dir = tmp / "wheels"
    # a copy of the checkout: setuptools builds in the source folder (build/, *.egg-info)
    src = tmp / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "dist", "build", "*.egg-info", "__pycache__", ".pytest_cache", "bench"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), str(src)], check=True, capture_output=True, text=True)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    wheel = next(wheel_dir.glob("edgesmith-*.whl"))
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
