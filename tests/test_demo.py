"""README's main job, `bash scripts/demo.sh`, as a user runs it (one layer here, not two): a random-weight Phi-3-mini
compiled for the host, arm64 and Android, run on the host, arm64 under qemu, the emulated board
(sshd) and phone (adb), then a chat, a conversation on the phone, a profile and the summary. The
devices' greedy tokens are compared by the demo itself (its exit code); the test reads its summary.
Its own output folder (DEMO_OUT) and emulator state (EDGESMITH_STATE), so it runs beside anything."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emulated_fixtures import pytestmark_emulated

pytestmark = [pytestmark_emulated, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


def test_demo_runs_on_four_devices_and_ends_with_its_summary(tmp_path):
    out = tmp_path / "demo"
    # one layer instead of the demo's two: the same path, steps and summary (qemu's time is mostly
    # the 32064 x 3072 embedding and lm_head, which stay)
    env = dict(os.environ, MODEL="random:phi-3-mini-4k:layers=1", DEMO_OUT=str(out), EDGESMITH_STATE=str(tmp_path / "state"),
               EDGESMITH_VENV=str(Path(sys.executable).parents[1]))  # this venv: install.sh finds it complete
    env.pop("EDGESMITH_DEVICES", None)
    p = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=2400)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summary = p.stdout[p.stdout.index("\nSummary\n"):]
    assert "the four devices gave the same tokens" in summary, summary
    runs = {name: json.loads((out / f"run-{name}.json").read_text()) for name in ("host", "arm64-qemu", "board", "phone")}
    assert len(runs["host"]["output_ids"]) == 8 and all(r["output_ids"] == runs["host"]["output_ids"] for r in runs.values())
    for name, r in runs.items():  # each device's tokens and speeds are in the summary
        assert f"  {name:10s} tokens {' '.join(map(str, r['output_ids']))} " in summary, name
        assert r["prefill_tok_s"] > 0 and r["decode_tok_s"] > 0
    assert "== host (chat)" in p.stdout and "== phone (adb, a conversation on one KV cache)" in p.stdout
    assert "<!-- edgesmith-record" in (out / "host-profile.md").read_text()
    assert not _processes_naming(tmp_path / "state"), "the demo's emulators outlived it"


def _processes_naming(path: Path) -> list[str]:
    """Command lines of running processes that name `path` (the emulators' --state)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if str(path) in cmd:
            found.append(cmd)
    return found
