"""Faults on the emulated devices, during push and during run: the command fails within its
timeout with one line naming the device and what happened; no file on the device is ever
partial under its final name; the next run succeeds and sends only what was missing."""
from __future__ import annotations

import hashlib
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edgesmith.runtime.emulated import clear_fault
from edgesmith.runtime.session import run_bundle
from edgesmith.runtime.transports import DeviceError

from emulated_fixtures import *  # noqa: F401,F403
from emulated_fixtures import TOKENS, device_files, pytestmark_emulated, wipe

pytestmark = [pytestmark_emulated, pytest.mark.slow]
# Deadlines: a stall is waited out, so its deadline is short, but never shorter than this machine,
# as loaded now, needs to reach the fault (the `deadlines` fixture measures it): 4 s for a push
# stall, 8 s for a run stall (qemu start-up included), or more on a busy machine. A cut, garbage
# or a full disk must be seen, not waited out: their deadline is long (LINK_TIMEOUT), and a
# message saying "no answer" fails them (but for garbage over SSH: says()).
TIMEOUT = 4.0
RUN_TIMEOUT = 8.0
LINK_TIMEOUT = 30.0
GENERATE = ["generate", "--tokens", TOKENS, "-n", "12"]
# What each fault's message says (the link's own words vary with where it broke).
SAYS = {
    "cut": r"connection lost|failed: .*(closed|reset|protocol fault|offline)",  # a cut is seen, not waited out
    "stall": r"no answer within [0-9.]+ s during",
    "garbage": r"connection lost|failed: .*(closed|reset|protocol fault|offline)",
    # the emulated full disk's df says 0 free: refused before anything is sent (a disk that fills
    # up mid-push: test_concurrency.py, on a real tmpfs)
    "disk_full": r"disk full: the push needs [0-9.]+ MiB and the device has 0 KiB free at ",
}


def says(kind: str, name: str) -> str:
    """SAYS[kind], except garbage on the board (SSH), which may also be waited out: SSH's packet
    length travels first, and paramiko reads a whole packet before it checks it, so a garbage
    length that happens to be a multiple of the cipher's block (1 in 16 for AES) has it wait for
    up to 4 GiB that never come, until the command's deadline (seen once in a full run,
    2026-12-07); OpenSSH caps a packet at 256 KiB, paramiko does not. adb sees every garbage."""
    if kind == "garbage" and name == "board":
        return SAYS[kind] + r"|no answer within [0-9.]+ s during"
    return SAYS[kind]


def expected(bundle: Path) -> dict[str, str]:
    import json

    want = {rel: m["sha256"] for rel, m in json.loads((bundle / "manifest.json").read_text())["files"].items()}
    want["manifest.json"] = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    return want


def complete_files(emulators, name: str, bundle: Path) -> set[str]:
    """Files on the device under their final names; every one must be whole and right."""
    want = expected(bundle)
    final = {rel: sha for rel, sha in device_files(emulators, name, bundle).items() if not rel.endswith(".partial")}
    wrong = {rel for rel, sha in final.items() if want.get(rel) != sha}
    assert not wrong, f"partial or wrong files under their final names on {name}: {sorted(wrong)}"
    return set(final)


def temps_of(files: dict[str, str], rel: str, sha: str) -> dict[str, str]:
    """The temporaries of `rel` at `sha` among the device's files, by any push: `.NAME.<sha[:16]>.<token>.partial`
    (the pattern spelled out here, not taken from the code under test)."""
    head, _, name = rel.rpartition("/")
    pattern = re.escape(f"{head + '/' if head else ''}.{name}.{sha[:16]}.") + r"[0-9a-f]+\.partial"
    return {path: h for path, h in files.items() if re.fullmatch(pattern, path)}


def held_files(emulators, name: str, bundle: Path) -> set[str]:
    """Files the device holds whole, under their final or a temporary name."""
    files = device_files(emulators, name, bundle)
    return {rel for rel, sha in expected(bundle).items()
            if files.get(rel) == sha or sha in temps_of(files, rel, sha).values()}


def fails_in_time(name: str, call, timeout: float = TIMEOUT) -> tuple[str, float]:
    t0 = time.monotonic()
    with pytest.raises(DeviceError) as info:
        call()
    took = time.monotonic() - t0
    message = str(info.value)
    # The deadline is the behaviour: failing within it, with the slack a loaded 2-core machine needs
    # to notice (a hang would take the test's whole timeout, or forever).
    assert took < timeout + 10, f"{name}: took {took:.1f} s to fail ({message})"
    assert message.startswith(f"device '{name}': ") and "\n" not in message
    return message, took


def in_flight(emulators, name: str, bundle: Path) -> set[str]:
    """Files with a temporary on the device, whole or not: the one being written when the link
    broke may still be completed by the device's side (its sftp-server or adbd flushing what had
    arrived) after our client has given up; a later push then rightly only renames it."""
    files = device_files(emulators, name, bundle)
    return {rel for rel, sha in expected(bundle).items() if temps_of(files, rel, sha)}


def settle(emulators, name: str, bundle: Path, quiet: float = 1.5, limit: float = 15.0) -> None:
    """Wait until the device's files stop changing: after our client gave up, the device's side
    (sftp-server, adbd) may still be writing what had arrived; a snapshot taken before that ends
    misses a temporary that the retry then rightly renames."""
    last, since, t0 = None, time.monotonic(), time.monotonic()
    while time.monotonic() - t0 < limit:
        now = device_files(emulators, name, bundle)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.25)


def retry_sends_only_what_was_missing(devices, emulators, name, bundle, before: set[str],
                                      started: set[str] = frozenset()) -> None:
    clear_fault(Path(emulators["state_dir"]), name)
    reports = []
    records = run_bundle(devices[name], bundle, GENERATE, timeout=60, on_push=reports.append)
    assert records[-1]["stop_reason"] == "length"
    sent, renamed = set(reports[0].sent), set(reports[0].renamed)
    assert not sent & (before - {"manifest.json"}), f"re-sent what the device already held: {sent & before}"
    assert renamed <= before | started, f"renamed what was never sent: {renamed - before - started}"
    assert sent | renamed | before >= set(expected(bundle))
    assert complete_files(emulators, name, bundle) == set(expected(bundle))


def on_both(check) -> None:
    """Board and phone at once (they are independent devices): halves the time spent waiting out stalls."""
    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(check, name) for name in ("board", "phone")]:
            future.result()


@pytest.fixture(scope="module")
def deadlines(devices, emulators, arm64_bundle) -> dict[str, float]:
    """{"push": s, "run": s}: the stall deadlines, scaled by what a clean push and run take on this
    machine now (measured on both devices at once, as the faults run): a whole push, then a run
    with the runner streaming, must fit with room to spare before the stall is waited out."""
    took = {}

    def measure(name):
        wipe(emulators, name)
        t0 = time.monotonic()
        run_bundle(devices[name], arm64_bundle, GENERATE, timeout=120)  # push + run
        t1 = time.monotonic()
        run_bundle(devices[name], arm64_bundle, GENERATE, timeout=120)  # run only
        took[name] = (t1 - t0, time.monotonic() - t1)

    on_both(measure)
    push = max(TIMEOUT, 1.5 * max(p for p, _ in took.values()))
    run = max(RUN_TIMEOUT, 3 * max(r for _, r in took.values()))
    print(f"\nclean push+run / run: {took}; stall deadlines: push {push:.1f} s, run {run:.1f} s")
    return {"push": round(push, 1), "run": round(run, 1)}


@pytest.mark.parametrize("kind", ["cut", "stall", "garbage", "disk_full"])
def test_fault_during_push(devices, emulators, arm64_bundle, fault, kind, deadlines):
    timeout = deadlines["push"] if kind == "stall" else LINK_TIMEOUT
    on_both(lambda name: _fault_during_push(devices, emulators, arm64_bundle, fault, name, kind, timeout))


def _fault_during_push(devices, emulators, arm64_bundle, fault, name, kind, timeout):
    wipe(emulators, name)
    # ~2 MB in: the loader and libc are through, the C++ runtime libraries are on the way.
    fault(name, kind, 1_000_000 if kind == "disk_full" else 2_000_000)
    message, took = fails_in_time(name, lambda: run_bundle(devices[name], arm64_bundle, GENERATE, timeout=timeout),
                                  timeout)
    print(f"\n{name} {kind} during push: failed after {took:.2f} s: {message}")
    assert re.search(says(kind, name), message), message
    settle(emulators, name, arm64_bundle)
    complete_files(emulators, name, arm64_bundle)
    before = held_files(emulators, name, arm64_bundle)
    started = in_flight(emulators, name, arm64_bundle)
    if kind == "disk_full":
        assert not before and not started  # nothing sent to a full disk
    else:
        assert before and len(before) < len(expected(arm64_bundle))  # it really broke mid-push
    retry_sends_only_what_was_missing(devices, emulators, name, arm64_bundle, before, started)


@pytest.mark.parametrize("kind", ["cut", "stall", "garbage"])
def test_fault_during_run(devices, emulators, arm64_bundle, fault, kind, deadlines):
    timeout = deadlines["run"] if kind == "stall" else LINK_TIMEOUT
    on_both(lambda name: _fault_during_run(devices, emulators, arm64_bundle, fault, name, kind, timeout))


def _fault_during_run(devices, emulators, arm64_bundle, fault, name, kind, timeout):
    run_bundle(devices[name], arm64_bundle, GENERATE, timeout=60)  # pushed and working
    tokens = []

    def on_line(record):
        if "token" not in record:
            return  # the runner's "loaded" line comes before the tokens
        if not tokens:
            fault(name, kind)  # the link breaks while the runner streams its tokens
        tokens.append(record)

    long_run = ["generate", "--tokens", TOKENS, "-n", "400", "--stream"]
    message, took = fails_in_time(
        name, lambda: run_bundle(devices[name], arm64_bundle, long_run, timeout=timeout, on_line=on_line), timeout)
    print(f"\n{name} {kind} during run: failed after {took:.2f} s: {message}")
    assert re.search(says(kind, name), message), message
    assert tokens and not any("output_ids" in r for r in tokens)
    before = complete_files(emulators, name, arm64_bundle)
    assert before == held_files(emulators, name, arm64_bundle) == set(expected(arm64_bundle))
    retry_sends_only_what_was_missing(devices, emulators, name, arm64_bundle, before)
