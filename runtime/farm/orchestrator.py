"""`edgesmith farm run`: compile once per target, then lease, push and profile every selected device
in parallel; a device that fails is retried per the policy and then reported while the others
finish; the rows are gated against a baseline; the reports are written (report.py).

Exit codes (also in docs/farm.md):

| code | meaning                                                                            |
| ---- | ---------------------------------------------------------------------------------- |
| 0    | pass: every device ran (or no more failed than --allow-failures), nothing slower    |
| 1    | usage or configuration error (bad flags, devices.yaml, tracker unreachable, ...)    |
| 3    | regression: a row is slower than the baseline beyond its noise and the threshold   |
| 4    | more devices failed than --allow-failures permits (wins over 3)                    |
"""
from __future__ import annotations

import fcntl
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from edgesmith.errors import EdgesmithError, one_line
from edgesmith.runtime.devices import Device
from edgesmith.runtime.profile import records as profile_records
from edgesmith.runtime.profile.profiler import ProfileOptions

EXIT_PASS, EXIT_USAGE, EXIT_REGRESSION, EXIT_FAILURES = 0, 1, 3, 4
SCHEMA = "edgesmith.farm/1"
LEASE_LOG = "farm-leases.log"  # on the device, in its workdir: one line per lease begin/end


@dataclass
class FarmOptions:
    model: str
    out: Path
    quant: str | None = None  # None: each target's default (presets.default_quantization)
    select: list[str] = field(default_factory=list)
    devices_file: Path | None = None
    tracker: str | None = None
    baseline: Path | None = None
    profile: ProfileOptions = field(default_factory=lambda: ProfileOptions(kernels_top=0))
    retries: int = 1             # a failed device is tried again this many times
    retry_delay: float = 2.0
    allow_failures: int = 0      # devices that may fail without failing the run
    threshold: float = 0.05      # slower by more than this (and beyond the noise) is a regression
    priority: int = 0            # higher is served first by the tracker
    lease_timeout: float = 3600.0
    tune: bool = False  # tune each device first (runtime/tune/; a cached record is reused) and profile its tuned bundle
    tune_budget_s: float = 600.0
    allow_emulated: bool = False  # --tune on emulated devices too (the mechanism only); else they keep the defaults
    user: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")


# ------------------------------------------------------------------ leases

class LocalLease:
    """Without a tracker: an exclusive lock file per device, so two runs on one machine take turns."""

    def __init__(self, name: str, timeout: float):
        from edgesmith.targets.cache import cache_root

        self.path = cache_root() / "farm" / "locks" / f"{name}.lock"
        self.name, self.timeout = name, timeout

    def acquire(self) -> dict | None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        end = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return None
            except BlockingIOError:
                if time.monotonic() > end:
                    os.close(self.fd)
                    raise EdgesmithError(f"device '{self.name}' stayed locked by another run for "
                                         f"{self.timeout:g}s ({self.path})") from None
                time.sleep(0.2)

    def release(self) -> None:
        os.close(self.fd)  # closing drops the lock


class TrackerLease:
    """REQUEST the device's key at the tracker (queued by priority), then claim it at its agent."""

    def __init__(self, address: str, key: str, user: str, priority: int, timeout: float):
        self.address, self.key, self.user, self.priority, self.timeout = address, key, user, priority, timeout
        self.sock = None

    def acquire(self) -> dict:
        from edgesmith.runtime.farm import tracker as tracker_protocol
        from edgesmith.runtime.farm.agent import lease_from

        with tracker_protocol.TrackerConnection(self.address) as conn:
            try:
                answer = conn.call(tracker_protocol.REQUEST, self.key, self.user, self.priority, timeout=self.timeout)
            except tracker_protocol.TrackerError as err:
                if "no answer" not in str(err):
                    raise
                raise tracker_protocol.TrackerError(f"{self.key} still taken after {self.timeout:g}s on tracker {self.address} "
                                     "(other jobs hold or are ahead in the queue); raise --lease-timeout") from None
        if not isinstance(answer, list) or answer[0] != tracker_protocol.SUCCESS:
            raise tracker_protocol.TrackerError(f"tracker {self.address} refused REQUEST {self.key}: {answer!r}")
        addr, port, matchkey = answer[1]
        self.sock, entry = lease_from(self.address, addr, port, matchkey, self.user, self.priority)
        return entry

    def release(self) -> None:
        if self.sock is not None:
            self.sock.close()


# ------------------------------------------------------------------ one device

def _mark(device, text: str, timeout: float = 30.0) -> None:
    """Append a line to the lease log on the device itself (its clock), best effort."""
    from edgesmith.runtime.transports import open_transport
    from edgesmith.runtime.transports.base import shell_join

    try:
        with open_transport(device) as t:
            w = shell_join([device.workdir])
            t.check(f'mkdir -p {w} && echo "$(date +%s.%N) {text}" >> {w}/{LEASE_LOG}', timeout=timeout,
                    what="writing the lease log")
    except Exception:  # noqa: BLE001 - best effort
        pass


def _run_device(o: FarmOptions, spec, bundle: dict | None, say) -> dict:
    """Lease, then profile with retries. Never raises: a failure is the device's result."""
    from edgesmith.runtime.devices import parse_devices
    from edgesmith.runtime.profile.profiler import profile_bundle

    result = {"name": spec.name, "target": spec.target, "tags": list(spec.tags), "transport": spec.transport,
              "emulated": spec.emulated, "status": "failed", "reason": None, "attempts": [], "records": [],
              "agent": getattr(spec, "agent", None), "lease_wait_s": None}
    if bundle is None or bundle.get("error"):
        result["reason"] = f"no bundle for target {spec.target}: {bundle and bundle.get('error')}"
        return result
    if o.tracker:
        from edgesmith.runtime.farm.tracker import device_key
        lease = TrackerLease(o.tracker, device_key(spec.target, spec.name), o.user, o.priority, o.lease_timeout)
    else:
        lease = LocalLease(spec.name, o.lease_timeout)
    t0 = time.monotonic()
    try:
        entry = lease.acquire()
    except Exception as err:  # noqa: BLE001 - this device's row, the others still report
        result["reason"] = f"no lease: {one_line(err)}"
        return result
    result["lease_wait_s"] = round(time.monotonic() - t0, 3)
    try:
        device = spec.device if entry is None else parse_devices([entry], f"agent {spec.agent}")[spec.name]
        _mark(device, f"begin {o.user}")
        if o.tune:
            try:
                bundle = _tuned_bundle(o, device, bundle, result, say)
            except Exception as err:  # noqa: BLE001 - this device's row, the others still report
                result["reason"] = f"tuning failed: {one_line(err)}"
                _mark(device, f"end {o.user}")
                return result
        result["bundle"] = bundle["path"]
        for attempt in range(1, o.retries + 2):
            started = time.monotonic()
            try:
                say(f"[{spec.name}] attempt {attempt}: profiling {Path(bundle['path']).name}")
                recs = profile_bundle(Path(bundle["path"]), device, o.profile,
                                      progress=lambda m: say(f"[{spec.name}] {m}"))
                result["attempts"].append({"attempt": attempt, "ok": True, "error": None,
                                           "seconds": round(time.monotonic() - started, 2)})
                result.update(status="passed", records=recs, reason=None)
                break
            except Exception as err:  # noqa: BLE001 - this device's row, the others still report
                result["attempts"].append({"attempt": attempt, "ok": False, "error": one_line(err),
                                           "seconds": round(time.monotonic() - started, 2)})
                result["reason"] = one_line(err)
                say(f"[{spec.name}] attempt {attempt} failed: {one_line(err)}")
                if attempt <= o.retries:
                    time.sleep(o.retry_delay)
        if result["status"] == "failed":
            n = len(result["attempts"])
            result["reason"] = f"failed {n} attempt{'s' * (n != 1)}; last: {result['reason']}"
        _mark(device, f"end {o.user}")
    finally:
        lease.release()
    return result


def _tuned_bundle(o: FarmOptions, device, bundle: dict, result: dict, say) -> dict:
    """`--tune`: the device's tuning record (measured now, or the cache's when it has every shape)
    and the bundle compiled with it; an emulated device without --allow-emulated keeps `bundle`."""
    from edgesmith.runtime.farm.bundles import bundle_for
    from edgesmith.runtime.tune.tuner import LineProgress, TuneOptions, tune_model

    if device.emulated and not o.allow_emulated:
        result["tuning"] = {"status": "skipped", "reason": "emulated device: default kernels (--allow-emulated to tune)"}
        say(f"[{device.name}] not tuned: emulated (its timings would choose nothing real)")
        return bundle
    say(f"[{device.name}] tuning (budget {o.tune_budget_s / 60:g} min; a cached complete record is reused)")
    options = TuneOptions(budget_s=o.tune_budget_s, allow_emulated=o.allow_emulated, quant=bundle.get("quant"))
    log = LineProgress(lambda msg: say(f"[{device.name}] {msg.strip()}"))  # no bars: devices run in parallel
    record, path = tune_model(o.model, device, options, progress=log)
    result["tuning"] = {"status": "tuned", "record": str(path), "shapes": len(record.kernels),
                        "complete": record.complete, "emulated": record.emulated,
                        "fingerprint_id": record.fingerprint_id}
    tuned = bundle_for(o.model, bundle.get("quant"), device.target, progress=lambda m: say(f"[{device.name}] {m}"),
                       tuning=record, tuning_source=str(path))
    say(f"[{device.name}] tuned bundle {Path(tuned['path']).name}: {len(record.kernels)} kernel shapes")
    return tuned


# ------------------------------------------------------------------ the run

@dataclass(frozen=True)
class DeviceSpec:
    """A device the farm will profile: from the local devices.yaml (`device` set) or published on
    the tracker by an agent (`agent` set; its devices.yaml entry comes with the lease)."""

    name: str
    target: str
    tags: tuple[str, ...]
    transport: str | None
    emulated: bool
    agent: str | None = None
    device: Device | None = None


def _specs(o: FarmOptions) -> list[DeviceSpec]:
    from edgesmith.runtime.farm.select import select_devices

    if o.tracker:
        from edgesmith.runtime.farm.tracker import farm_status

        devices = [DeviceSpec(name=d["name"], target=d["target"], tags=tuple(d.get("tags", [])),
                              transport=d.get("transport"), emulated=bool(d.get("emulated")), agent=d.get("agent"))
                   for d in farm_status(o.tracker)["devices"]]
        if not devices:
            raise EdgesmithError(f"tracker {o.tracker} has no devices: start `edgesmith farm agent --tracker "
                                 f"{o.tracker}` on the machines with devices")
    else:
        from edgesmith.runtime.devices import load_devices

        devices = [DeviceSpec(name=d.name, target=d.target, tags=tuple(d.tags), transport=d.transport,
                              emulated=d.emulated, device=d)
                   for d in load_devices(o.devices_file).values()]
    return select_devices(devices, o.select)


def read_baseline(path: Path) -> list[dict]:
    """Profile records from a previous farm run's results.json, or any `edgesmith profile` output."""
    import json

    from edgesmith.runtime.profile.formats import read_file

    path = Path(path)
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data.get("schema") == SCHEMA:
            return data["records"]
    except (OSError, ValueError):
        pass
    return read_file(path)


def farm_run(o: FarmOptions, *, progress=None) -> dict:
    """Run the farm and write the reports into o.out; returns the results (results.json's content)."""
    from edgesmith.runtime.farm import report
    from edgesmith.runtime.farm.bundles import bundle_for

    say = progress or (lambda msg: None)
    if o.retries < 0 or o.allow_failures < 0:
        raise EdgesmithError(f"--retries and --allow-failures must be >= 0, got {o.retries} and {o.allow_failures}")
    baseline = read_baseline(o.baseline) if o.baseline else None
    started, t0 = profile_records.now_utc(), time.monotonic()
    specs = _specs(o)
    say(f"farm: {len(specs)} device(s): {', '.join(s.name for s in specs)}"
        + (f" (tracker {o.tracker})" if o.tracker else ""))

    bundles = {}
    for target in dict.fromkeys(s.target for s in specs):
        try:
            bundles[target] = bundle_for(o.model, o.quant, target, progress=say)
        except Exception as err:  # noqa: BLE001 - that target's devices fail, the others run
            bundles[target] = {"target": target, "error": one_line(err)}
            say(f"bundle for {target}: {one_line(err)}")

    lock = threading.Lock()

    def locked_say(msg):
        with lock:
            say(msg)

    with ThreadPoolExecutor(max_workers=max(1, len(specs))) as pool:
        devices = list(pool.map(lambda s: _run_device(o, s, bundles.get(s.target), locked_say), specs))

    results = assemble(o, devices, list(bundles.values()), baseline)
    results.update(started=started, finished=profile_records.now_utc(), seconds=round(time.monotonic() - t0, 2))
    report.write_reports(results, Path(o.out))
    return results


def assemble(o: FarmOptions, devices: list[dict], bundles: list[dict], baseline: list[dict] | None) -> dict:
    """The results: one row per device x bundle x test, the verdict and the exit code."""
    from edgesmith.runtime.profile.compare import compare

    records = [r for d in devices for r in d["records"]]
    matched = {}
    if baseline is not None:
        for e in compare(baseline, records):
            matched[tuple(e[k] for k in profile_records.KEY)] = e
    base_rows = {profile_records.row_key(r): r for rec in (baseline or []) for r in profile_records.rows(rec)}
    rows = []
    for d in devices:
        bundle = next((b for b in bundles if b["target"] == d["target"]), {})
        if d["status"] == "failed":
            for p in o.profile.prompts:
                for n in o.profile.gens:
                    for test in (f"pp{p}", f"tg{n}@p{p}"):
                        rows.append({"device": d["name"], "target": d["target"],
                                     "bundle": d.get("bundle") or bundle.get("path"),
                                     "test": test, "status": "failed", "reason": d["reason"], "mean": None,
                                     "sd": None, "n": 0, "samples": [], "baseline": None, "change": None,
                                     "significant": None, "verdict": "failed", "flags": []})
            continue
        for rec in d["records"]:
            for row in profile_records.rows(rec):
                key = profile_records.row_key(row)
                e, b = matched.get(key), base_rows.get(key)
                regression = bool(e and e["significant"] and e["change"] < -o.threshold)
                rows.append({
                    "device": d["name"], "target": d["target"], "bundle": d.get("bundle") or bundle.get("path"),
                    "test": row["test"],
                    "threads": row["threads"], "status": "regression" if regression else "passed",
                    "reason": (f"{100 * e['change']:+.1f}% vs baseline ({b['stats']['mean']:.2f} -> "
                               f"{row['stats']['mean']:.2f} tok/s), beyond the noise and the "
                               f"{100 * o.threshold:g}% threshold") if regression else None,
                    "mean": row["stats"]["mean"], "sd": row["stats"]["sd"], "n": row["stats"]["n"],
                    "samples": row["stats"]["samples"],
                    "baseline": {k: b["stats"][k] for k in ("mean", "sd", "n", "samples")} if b else None,
                    "change": e["change"] if e else None, "significant": e["significant"] if e else None,
                    "verdict": (e["verdict"] if e else "no baseline") if baseline is not None else "no baseline",
                    "flags": row["flags"]})
        if any(r["status"] == "regression" for r in rows if r["device"] == d["name"]):
            d["status"] = "regression"
    failed = [d for d in devices if d["status"] == "failed"]
    regressed = [r for r in rows if r["status"] == "regression"]
    if len(failed) > o.allow_failures:
        verdict, code = "failures", EXIT_FAILURES
    elif regressed:
        verdict, code = "regression", EXIT_REGRESSION
    else:
        verdict, code = "pass", EXIT_PASS
    return {
        "schema": SCHEMA, "model": o.model, "quant": o.quant or "each target's default", "tracker": o.tracker,
        "baseline": str(o.baseline) if o.baseline else None,
        "policy": {"retries": o.retries, "allow_failures": o.allow_failures, "threshold": o.threshold},
        "params": {"prompts": o.profile.prompts, "gens": o.profile.gens, "reps": o.profile.reps,
                   "max_reps": o.profile.max_reps},
        "verdict": verdict, "exit_code": code,
        "counts": {"devices": len(devices), "passed": sum(d["status"] == "passed" for d in devices),
                   "failed": len(failed), "regressions": len(regressed)},
        "bundles": bundles,
        "devices": [{k: v for k, v in d.items() if k != "records"} for d in devices],
        "results": rows,
        "records": records,
    }
