"""Shared by the bench scripts: statistics, the table writer, the read bandwidth (the runner's probe),
bundles from the package's cache, llama.cpp's sources."""
from __future__ import annotations

import json
import shutil
import statistics
import sys
import tarfile
from pathlib import Path


def summary(samples: list[float]) -> dict:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "samples": samples}


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Markdown table (the package's one writer); columns = [(key, header)]."""
    from edgesmith.runtime.profile.formats import markdown_table

    return markdown_table([h for _, h in columns], [[_fmt(r.get(k)) for k, _ in columns] for r in rows])


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return "" if v is None else str(v)


def read_bandwidth_gbs(threads: int | None = None, mb: int = 0, reps: int = 5) -> tuple[float, str]:
    """(GB/s, how): this host's read bandwidth by the one probe edgesmith has, the runner's own
    (`runner membw`, runtime/runner/membw.h: what `edgesmith profile` takes for the roofline's
    ceiling): the best of `reps` passes over `mb` MiB (0: four times the last-level cache) on
    `threads` threads (None: every core this process may use)."""
    import os
    import subprocess
    import tempfile

    from edgesmith.targets.presets import get_preset
    from edgesmith.targets.runner_build import bundle_runtime_files

    threads = threads or len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="edgesmith-membw-") as tmp:
        for name, path in bundle_runtime_files(get_preset("host")).items():  # the runner and its libraries
            shutil.copy2(path, Path(tmp) / name)
        done = subprocess.run([str(Path(tmp) / "runner"), "membw", tmp, "--mb", str(mb), "-r", str(reps)],
                              capture_output=True, text=True, env=dict(os.environ, TVM_NUM_THREADS=str(threads)))
    if done.returncode != 0:
        raise RuntimeError(f"runner membw failed: {done.stderr.strip()[-300:]}")
    result = [json.loads(line) for line in done.stdout.splitlines() if '"summary"' in line][-1]
    return result["read_gb_s"], f"runner membw, {result['mb']} MiB, {result['threads']} threads"


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")


def cached_bundle(model: str, quant: str, target: str = "host", *, rebuild: bool = False, **options) -> Path:
    """A bundle from the package's one bundle cache (compiler/bundle/provenance.py: keyed by the
    checkpoint, the options and the compiler's own source, so never a stale one), compiled first
    when missing; options: compile options (context, kv_dtype, ...); compile_kwargs the rest."""
    from edgesmith.compiler.bundle.provenance import cached_bundle as package_cache

    tuning = options.pop("tuning", None)
    extra = {}
    if tuning is not None:
        extra = {"tuning": tuning, "tuning_source": options.pop("tuning_source", ""),
                 "key_extra": json.dumps(tuning.tuning().as_dict(), sort_keys=True)}
    got = package_cache(model, quant, target, cache="bench", options=options, rebuild=rebuild,
                        progress=lambda msg: print(msg, file=sys.stderr), **extra)
    return got.path


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
