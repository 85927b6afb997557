"""Shared by the bench scripts: statistics, a table printer, memory-bandwidth measurement."""
from __future__ import annotations

import json
import shutil
import tarfile
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def summary(samples: list[float]) -> dict:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "samples": samples}


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Markdown table; columns = [(key, header)]."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "| " + " | ".join("---" for _ in columns) + " |"
    body = ["| " + " | ".join(_fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return "" if v is None else str(v)


def read_bandwidth_gbs(size_mb: int = 512, reps: int = 5) -> float:
    """Read bandwidth of this host: median of summing a buffer far larger than the caches."""
    a = np.ones(size_mb * (1 << 20) // 8, dtype=np.float64)
    a.sum()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a.sum()
        times.append(time.perf_counter() - t)
    return a.nbytes / statistics.median(times) / 1e9


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")


def cached_bundle(out_dir: Path, model: str, quant: str, rebuild: bool = False) -> Path:
    """A host bundle of model+quant under out_dir/bundles, compiled unless already there."""
    from edgesmith.compiler.build import compile_bundle

    bundle = out_dir / "bundles" / f"{model.replace(':', '_').replace('=', '')}-{quant}-host"
    if rebuild or not (bundle / "manifest.json").exists():
        t = time.perf_counter()
        compile_bundle(model, quant, "host", bundle)
        print(f"compiled {quant} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return bundle


def extract_llama_sdist(sh, version: str, download: Path, dest: Path, keep: tuple[str, ...]) -> Path:
    """llama-cpp-python's sdist downloaded into `download`, the parts of its vendor/llama.cpp named
    by `keep` (path prefixes) extracted into `dest` and marked complete; `sh(cmd, what=...)` runs
    pip the caller's way (its errors are the caller's)."""
    shutil.rmtree(download, ignore_errors=True)
    sh([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
        f"llama-cpp-python=={version}", "-d", str(download)], what="pip download llama-cpp-python sdist")
    with tarfile.open(next(download.glob("llama_cpp_python-*.tar.gz"))) as tar:
        root = tar.getnames()[0].split("/")[0]
        prefix = f"{root}/vendor/llama.cpp/"
        members = [m for m in tar.getmembers() if m.name.startswith(tuple(prefix + k for k in keep))]
        for m in members:
            m.name = m.name[len(prefix):]
        tar.extractall(dest, members=members, filter="data")
    shutil.rmtree(download)
    (dest / ".complete").touch()
    return dest
