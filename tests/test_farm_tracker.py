"""Leases through TVM's real RPC tracker (`python -m tvm.exec.rpc_tracker`), no device work: the
tracker serves waiting jobs by priority, a lease whose holder is killed comes back, and `farm
status` shows devices, holders and the queue."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from edgesmith.runtime.devices import parse_devices
from edgesmith.runtime.farm.agent import Agent
from edgesmith.runtime.farm.orchestrator import TrackerLease
from edgesmith.runtime.farm.tracker import TrackerError, farm_status, format_status
from tracker_proc import running_tracker

ENTRY = {"name": "dut", "transport": "local", "target": "host", "tags": ["bench"]}
KEY = "edgesmith/host/dut"


@pytest.fixture(scope="module")
def tracker():
    with running_tracker() as address:
        yield address


@pytest.fixture
def agent(tracker):
    device = parse_devices([ENTRY])["dut"]
    a = Agent(tracker, [(device, ENTRY)], name="rack", host="127.0.0.1", claim_timeout=3).start()
    yield a
    a.stop()
    # the tracker drops the agent's offers when its connection closes: wait until it has
    wait_until(lambda: not farm_status(tracker)["devices"], "the tracker to forget the agent")


def wait_until(predicate, what: str, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_waiting_jobs_are_served_by_priority(tracker, agent):
    first = TrackerLease(tracker, KEY, "holder", 0, 10)
    assert first.acquire()["name"] == "dut"
    order, threads = [], []

    def wait(user, priority):
        lease = TrackerLease(tracker, KEY, user, priority, 20)
        lease.acquire()
        order.append(user)
        lease.release()

    for n, (user, priority) in enumerate((("low", 0), ("high", 10)), 1):  # low asks first
        threads.append(threading.Thread(target=wait, args=(user, priority)))
        threads[-1].start()
        wait_until(lambda: farm_status(tracker)["queue"].get(KEY, {}).get("pending") == n, f"{user} in the queue")
    status = farm_status(tracker)
    assert status["queue"][KEY]["pending"] == 2 and status["devices"][0]["lease"]["user"] == "holder"
    text = format_status(status)
    assert "dut" in text and "leased" in text and "holder (priority 0" in text
    first.release()
    for t in threads:
        t.join(30)
    assert order == ["high", "low"]


def test_a_killed_holder_gives_the_device_back(tracker, agent):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        from edgesmith.runtime.farm.orchestrator import TrackerLease
        lease = TrackerLease({tracker!r}, {KEY!r}, "doomed", 0, 10)
        lease.acquire()
        print("leased", flush=True)
        import time; time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert holder.stdout.readline().strip() == "leased"
        with pytest.raises(TrackerError, match="still taken after 1s"):
            TrackerLease(tracker, KEY, "impatient", 0, 1).acquire()
    finally:
        holder.kill()
        holder.wait()
    lease = TrackerLease(tracker, KEY, "next", 0, 10)
    assert lease.acquire()["name"] == "dut"
    lease.release()


def test_a_forged_matchkey_gets_no_lease(tracker, agent):
    from edgesmith.runtime.farm.agent import lease_from

    with pytest.raises(TrackerError, match="refused the lease"):
        lease_from(tracker, "127.0.0.1", agent.port, f"{KEY}:0.123", "forger", 0)
    # the matchkey on offer, but not granted by the tracker: refused too
    with pytest.raises(TrackerError, match="not granted"):
        lease_from(tracker, "127.0.0.1", agent.port, agent.slots["dut"].matchkey, "forger", 0)


def test_usage_and_configuration_errors_exit_1(tmp_path, monkeypatch):
    from edgesmith.cli import main

    monkeypatch.delenv("EDGESMITH_TRACKER", raising=False)
    base = ["farm", "run", "--model", "random:tiny", "--out", str(tmp_path)]
    assert main(base + ["--tracker", "127.0.0.1:1"]) == 1            # no tracker there
    assert main(base + ["-s", "no-such-device-or-tag"]) == 1          # selects nothing
    assert main(base + ["--baseline", str(tmp_path / "missing.json")]) == 1
    assert main(["farm", "status"]) == 1  # no tracker named
