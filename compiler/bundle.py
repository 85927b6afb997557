"""The bundle folder: written under a temporary name and renamed at the end, so a failure
never leaves a half bundle; manifest.json records what it holds with the sha256 of every file.

BUNDLE/manifest.json
BUNDLE/lib/model.so                      model library (export_library)
BUNDLE/params/tensor-cache.json, params_shard_*.bin, param_names.txt
BUNDLE/bin/...                           runner + device runtime (targets.runner_build)
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from edgesmith.errors import BundleError

MANIFEST = "manifest.json"
FORMAT = 1


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_table(root: Path) -> dict[str, dict]:
    """{relative path: {sha256, size}} for every file under root but the manifest."""
    table = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST):
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


def write_manifest(root: Path, manifest: dict) -> dict:
    manifest = dict(manifest, format=FORMAT, files=file_table(root))
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def read_manifest(bundle: Path) -> dict:
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleError(f"bundle {bundle} is not a folder; pass the folder `edgesmith compile -o` wrote")
    path = bundle / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path} not found: '{bundle}' is not a bundle, or an unfinished one; compile it again")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); compile the bundle again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise BundleError(f"{bundle} has bundle format {got!r}; this edgesmith reads format {FORMAT}")
    problem = _manifest_problem(manifest)
    if problem:
        raise BundleError(f"{path} is damaged ({problem}); compile the bundle again")
    return manifest


def _manifest_problem(manifest: dict) -> str | None:
    """What makes a manifest unusable, or None: the fields every reader relies on."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return "no 'files' table"
    for rel, meta in files.items():
        parts = rel.split("/")
        if rel.startswith("/") or ".." in parts or "" in parts or rel == MANIFEST:
            return f"file entry {rel!r} is not a path inside the bundle"
        if not (isinstance(meta, dict) and isinstance(meta.get("sha256"), str) and len(meta["sha256"]) == 64
                and isinstance(meta.get("size"), int)):
            return f"file entry {rel!r} has no sha256 and size"
    if not isinstance(manifest.get("arch"), str):
        return "no 'arch'"
    if not isinstance(manifest.get("target"), dict) or "preset" not in manifest["target"]:
        return "no 'target' preset"
    return None


def verify(bundle: Path, manifest: dict | None = None, only=None) -> None:
    """Every file the manifest lists (or those of `only`) is present here with its recorded size
    and sha256. The error says it is this machine's copy that is bad, not a device's."""
    manifest = manifest or read_manifest(bundle)
    for rel in (manifest["files"] if only is None else only):
        meta = manifest["files"][rel]
        path = Path(bundle) / rel
        if not path.is_file():
            raise BundleError(f"bundle {bundle} (on this machine) is missing {rel}; copy the whole bundle again "
                              "or recompile")
        if path.stat().st_size != meta["size"] or sha256_file(path) != meta["sha256"]:
            raise BundleError(f"bundle {bundle} (on this machine): {rel} does not match its sha256 in the manifest "
                              "(the local copy is corrupt); copy the bundle again or recompile")
