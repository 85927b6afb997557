"""What CI installs is pinned, complete and unshadowed.

- requirements.lock (scripts/lock.sh) pins every requirement of pyproject.toml, runtime and the
  `test` extra, at one version inside its range, with hashes.
- A venv that install.sh made from the lock (CI's, made afresh each run) holds exactly the lock:
  install.sh installs it with --no-deps, so a package the lock lacked would be missing here, and
  `pip check` and importing every module of the package and of the tests prove nothing is.
- No project module takes the name of an installed library's module from a folder on sys.path
  (bench/kernels.py once answered transformers' `import kernels`).
"""
from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
VENV = Path(sys.prefix)
MARKER = VENV / "edgesmith-install"


def _locked() -> dict[str, dict]:
    """{name: {"version": ..., "hashes": [...]}} from requirements.lock."""
    entries: dict[str, dict] = {}
    current = None
    for line in LOCK.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if m:
            current = entries.setdefault(canonicalize_name(m.group(1)), {"version": m.group(2), "hashes": []})
        elif current is not None and "--hash=sha256:" in line:
            current["hashes"] += re.findall(r"--hash=sha256:([0-9a-f]{64})", line)
    return entries


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]


def test_the_lock_pins_every_requirement_inside_its_range():
    locked = _locked()
    assert len(locked) > 40, "requirements.lock looks empty"
    for req in _requirements():
        name = canonicalize_name(req.name)
        assert name in locked, f"{req} is not in requirements.lock (run scripts/lock.sh)"
        # the CPU torch is a local version (2.13.0+cpu); == 2.13.0 admits it
        assert req.specifier.contains(locked[name]["version"], prereleases=True), \
            f"requirements.lock has {name}=={locked[name]['version']}, outside pyproject.toml's {req}"
    unhashed = [n for n, e in locked.items() if not e["hashes"]]
    assert not unhashed, f"entries without a hash: {unhashed}"


def _installed() -> dict[str, str]:
    return {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}


def _from_this_lock() -> bool:
    import hashlib

    have = MARKER.read_text().strip() if MARKER.is_file() else ""
    return have == f"lock {hashlib.sha256(LOCK.read_bytes()).hexdigest()}"


needs_lock_venv = pytest.mark.skipif(not _from_this_lock(), reason=f"{VENV} was not installed from this "
                                     "requirements.lock (install.sh --latest, or by hand): CI's always is")


@needs_lock_venv
def test_the_venv_holds_the_lock_and_nothing_else():
    locked = {n: e["version"] for n, e in _locked().items()}
    installed = _installed()
    installed.pop("edgesmith")
    installed.pop("pip", None)  # the venv's own installer
    extra = {n: v for n, v in installed.items() if n not in locked}
    differ = {n: (v, locked[n]) for n, v in installed.items() if n in locked and v != locked[n]}
    missing = sorted(set(locked) - set(installed))
    assert not (extra or differ or missing), f"not in the lock: {extra}; other version: {differ}; missing: {missing}"


@needs_lock_venv
def test_the_lock_alone_is_complete():
    """The venv holds the lock alone (above), installed without resolving anything: every
    installed distribution's requirements are met, and every module of the package and every
    test module imports."""
    check = subprocess.run([sys.executable, "-m", "pip", "check", "--disable-pip-version-check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    modules = []
    for package, folder in (("edgesmith", "edgesmith"), ("edgesmith.compiler", "compiler"),
                            ("edgesmith.targets", "targets"), ("edgesmith.runtime", "runtime")):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            if rel.name == "__main__":
                continue
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            modules.append(".".join([package, *parts]))
    modules += [p.stem for p in sorted((ROOT / "tests").glob("*.py")) if p.stem != "conftest"]
    modules += [f"bench.{p.stem}" for p in sorted((ROOT / "bench").glob("*.py")) if p.stem != "__init__"]
    code = ("import importlib, json, sys\nsys.path[:0] = sys.argv[2:]\nbad = {}\n"
            "for m in json.loads(sys.argv[1]):\n    try:\n        importlib.import_module(m)\n"
            "    except BaseException as e:\n        bad[m] = f'{type(e).__name__}: {e}'\nprint(json.dumps(bad))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(modules), str(ROOT / "tests"), str(ROOT)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.splitlines()[-1]) == {}


# ---------------------------------------------------------------- nothing shadows a library

def _top_level_names(folder: Path) -> set[str]:
    """What `import NAME` finds in a folder on sys.path: its modules and its packages."""
    names = {p.stem for p in folder.glob("*.py")}
    names |= {p.name for p in folder.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    # a plain folder is a namespace package, found only when nothing else has the name; still a trap
    names |= {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    return names


def test_no_project_module_shadows_an_installed_one():
    """The folders on sys.path in a test run (tests/ from conftest.py, the repository root from
    pyproject's pytest pythonpath) and the scripts' folder hold no module named like a top-level
    module of an installed distribution."""
    installed = importlib.metadata.packages_distributions()
    clashes = []
    for folder in (ROOT, ROOT / "tests", ROOT / "scripts"):
        for name in sorted(_top_level_names(folder) - {"conftest", "edgesmith", "setup"}):
            if name in installed:
                clashes.append(f"{folder.relative_to(ROOT) if folder != ROOT else '.'}/{name}: also a module of "
                               f"{', '.join(sorted(installed[name]))}")
    assert not clashes, "\n".join(clashes)


def test_nothing_puts_a_project_folder_on_sys_path():
    """Only conftest.py adds a folder (tests/, for its helper modules) and bench's scripts swap
    their own folder for the repository root; nothing else edits sys.path."""
    allowed = {"tests/conftest.py"}
    offenders = []
    for folder in ("edgesmith", "compiler", "targets", "runtime", "tests", "bench", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            for node in ast.walk(ast.parse(path.read_text(), rel)):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in ("insert", "append", "extend")
                        and ast.unparse(node.func.value) == "sys.path" and rel not in allowed):
                    offenders.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
                if (isinstance(node, ast.Assign) and any(ast.unparse(t).startswith("sys.path") for t in node.targets)
                        and not (rel.startswith("bench/") and ast.unparse(node.value).endswith(".parents[1])"))):
                    offenders.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, "\n".join(offenders)
