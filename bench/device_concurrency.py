"""Several runs on one device at once (issue #34): how many give their own bundle's tokens.

    python -m bench.device_concurrency [--rounds 3] [--runs 8] [--first-runs 16] [-o FILE.json]

Starts private emulated devices (the board over a real sshd, the phone over the real adb),
compiles two different random:tiny bundles into folders of the same name (a/tiny-arm64 and
b/tiny-arm64) and takes each one's tokens alone, in place under qemu. Then, per device and round:

- same-named: the device wiped, --runs `edgesmith run B --device D --json` processes at once,
  a and b alternating;
- first-runs: the device wiped, --first-runs processes of bundle a at once.

It counts the runs that exit 0 with their own bundle's tokens ("right"), exit 0 with other tokens
("wrong"), or fail, and the pushes that sent files (from `--json`'s push record, where the
edgesmith under test has one). The edgesmith is the interpreter's: run this with another
checkout's python (`/path/to/other/.venv/bin/python -m bench.device_concurrency`, from this
folder) to measure that one.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import table

PROMPT, N = "1,2,3", 8


def edgesmith(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgesmith", *map(str, args)], capture_output=True, text=True,
                          timeout=600, **kw)


def at_once(bundles: list[Path], device: str, inventory: Path) -> list[dict]:
    procs = [subprocess.Popen([sys.executable, "-m", "edgesmith", "run", str(b), "--device", device, "--devices",
                               str(inventory), "--tokens", PROMPT, "-n", str(N), "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for b in bundles]
    out = []
    for bundle, p in zip(bundles, procs):
        stdout, stderr = p.communicate(timeout=600)
        out.append({"bundle": bundle, "rc": p.returncode, "stderr": stderr.strip(),
                    "record": json.loads(stdout) if p.returncode == 0 else None})
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=8, help="same-named runs at once (default 8)")
    ap.add_argument("--first-runs", type=int, default=16, help="first runs of one bundle at once (default 16)")
    ap.add_argument("-o", "--out", type=Path, default=Path("bench/results/device_concurrency.json"))
    args = ap.parse_args(argv)

    import edgesmith as package
    from edgesmith.runtime.emulated import start_emulators, stop_emulators, write_devices_file

    work = Path(tempfile.mkdtemp(prefix="es-concurrency-"))
    state = work / "state"
    status = start_emulators(state, ports={"ssh": 0, "adb_device": 0, "adb_server": 0})
    rows = []
    try:
        inventory = write_devices_file(status, work / "devices.yaml")
        pair = []
        for side, model in (("a", "random:tiny"), ("b", "random:tiny:seed=7")):
            out = work / side / "tiny-arm64"
            edgesmith("compile", model, "--quant", "q4f16", "--target", "android-arm64", "-o", out,
                      "-q").check_returncode()
            pair.append(out)
        want = {b: json.loads(edgesmith("run", b, "--tokens", PROMPT, "-n", N, "--json").stdout)["output_ids"]
                for b in pair}
        assert want[pair[0]] != want[pair[1]], "the two bundles give the same tokens: nothing to tell apart"
        for device in ("board", "phone"):
            for scenario, bundles in (("same-named", [pair[i % 2] for i in range(args.runs)]),
                                      ("first-runs", [pair[0]] * args.first_runs)):
                for r in range(args.rounds):
                    shutil.rmtree(state / device / "edgesmith", ignore_errors=True)
                    t0 = time.monotonic()
                    results = at_once(bundles, device, inventory)
                    wall = time.monotonic() - t0
                    ok = [x for x in results if x["rc"] == 0]
                    right = sum(x["record"]["output_ids"] == want[x["bundle"]] for x in ok)
                    pushes = [x["record"].get("push") for x in ok]
                    errors = sorted({x["stderr"].splitlines()[-1][:160] for x in results if x["rc"] and x["stderr"]})
                    rows.append({"device": device, "scenario": scenario, "round": r + 1, "runs": len(results),
                                 "right": right, "wrong": len(ok) - right, "failed": len(results) - len(ok),
                                 "pushes": (sum(1 for p in pushes if p and p["files_sent"])
                                            if all(pushes) else None),
                                 "wall_s": wall, "errors": errors})
    finally:
        stop_emulators(state)
        shutil.rmtree(work, ignore_errors=True)
    print(table(rows, [("device", "device"), ("scenario", "scenario"), ("round", "round"), ("runs", "runs"),
                       ("right", "right"), ("wrong", "wrong (exit 0, other tokens)"), ("failed", "failed"),
                       ("pushes", "pushes that sent files"), ("wall_s", "wall s")]))
    for row in rows:
        for e in row["errors"]:
            print(f"  {row['device']} {row['scenario']} round {row['round']}: {e}")
    commit = subprocess.run(["git", "-C", str(Path(package.__file__).resolve().parents[1]), "rev-parse", "--short",
                             "HEAD"], capture_output=True, text=True).stdout.strip()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "commit": commit,
                                    "edgesmith": str(Path(package.__file__).parent), "rows": rows}, indent=1) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
