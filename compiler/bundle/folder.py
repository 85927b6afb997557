"""The bundle folder: written under a temporary name and renamed at the end, so a failure
never leaves a half bundle; manifest.json records what it holds with the sha256 of every file.

BUNDLE/manifest.json
BUNDLE/lib/model.so                      model library (export_library)
BUNDLE/params/tensor-cache.json, params_shard_*.bin, param_names.txt
BUNDLE/bin/...                           runner + device runtime (targets.runner_build)
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from edgesmith.errors import BundleError

from edgesmith.compiler.bundle.manifest import MANIFEST, Manifest


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_inside(root: Path, rels) -> None:
    """Refuse a bundle file that is a symbolic link (or lies under one) pointing outside the
    bundle: its bytes are some other file of this machine's, which must never reach a device or
    a manifest."""
    top = Path(root).resolve()
    for rel in rels:
        path = Path(root) / rel
        real = path.resolve()
        if real != top and top not in real.parents:
            link = next((p for p in [path, *path.parents] if p.is_symlink()), path)
            raise BundleError(f"bundle {root} (on this machine): {rel} leads outside the bundle (symbolic link "
                              f"{link} -> {os.readlink(link) if link.is_symlink() else real}); edgesmith never "
                              "sends or records files from outside a bundle: put the file itself there "
                              "(cp -L) or recompile")


def file_table(root: Path) -> dict[str, dict]:
    """{relative path: {sha256, size}} for every file under root but the manifest."""
    table = {}
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)
    check_inside(root, [p.relative_to(root).as_posix() for p in files])
    for path in files:
        table[path.relative_to(root).as_posix()] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return table


@contextmanager
def staging(out: Path):
    """Yield a temporary folder beside `out`; on success it replaces `out`, on failure it is removed."""
    out = Path(out).absolute()
    if out.exists() and not (out / MANIFEST).exists() and any(out.iterdir()):
        raise BundleError(f"output folder {out} exists and is not a bundle; choose another -o or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_manifest(bundle: Path) -> Manifest:
    """The bundle's manifest, typed and checked (compiler/bundle/manifest.py is its one reader)."""
    return Manifest.read(bundle)


def verify(bundle: Path, manifest: Manifest | None = None, only=None) -> None:
    """Every file the manifest lists (or those of `only`) is present here with its recorded size
    and sha256. The error says it is this machine's copy that is bad, not a device's."""
    manifest = manifest or read_manifest(bundle)
    rels = list(manifest.files if only is None else only)
    check_inside(bundle, rels)
    for rel in rels:
        meta = manifest.files[rel]
        path = Path(bundle) / rel
        if not path.is_file():
            raise BundleError(f"bundle {bundle} (on this machine) is missing {rel}; copy the whole bundle again "
                              "or recompile")
        if path.stat().st_size != meta.size or sha256_file(path) != meta.sha256:
            raise BundleError(f"bundle {bundle} (on this machine): {rel} does not match its sha256 in the manifest "
                              "(the local copy is corrupt); copy the bundle again or recompile")
