"""The runner on a lent GPU machine, where edgesmith itself is not installed (no package registry
there: standard library only). edgesmith's own way of starting a runner is runtime/session.py;
this is the bare subset the GPU checks (cuda_check.py, opencl_gpu_check.py) need there."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path


def run_runner(bundle: Path, args: list[str], env: dict | None = None, timeout: float = 600) -> list[dict]:
    """`runner SUBCOMMAND BUNDLE ARGS` with the bundle's bin/ on the library path; its JSON lines.
    A failure raises RuntimeError with the runner's own last line."""
    env = dict(env or os.environ)
    env["LD_LIBRARY_PATH"] = f"{Path(bundle) / 'bin'}:{env.get('LD_LIBRARY_PATH', '')}"
    done = subprocess.run([str(Path(bundle) / "bin" / "runner"), args[0], str(bundle), *args[1:]],
                          capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        last = next((line for line in reversed(lines) if line.startswith("runner: ")), lines[-1] if lines else "")
        raise RuntimeError(f"runner {args[0]} on {Path(bundle).name}: "
                           f"{last.removeprefix('runner: ') or f'exit code {done.returncode}'}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
