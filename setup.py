"""The package list, derived: every folder with an __init__.py under the four source roots that
pyproject.toml maps into `edgesmith` (a hand-kept list left edgesmith.runtime.tune out of the wheel).
Everything else about the distribution is in pyproject.toml."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
ROOTS = {"edgesmith": "edgesmith", "edgesmith.compiler": "compiler", "edgesmith.targets": "targets",
         "edgesmith.runtime": "runtime"}


def packages() -> list[str]:
    found = []
    for package, folder in ROOTS.items():
        found.append(package)
        found += [f"{package}.{sub}" for sub in find_packages(str(HERE / folder))]
    return sorted(found)


setup(package_dir=ROOTS, packages=packages())
