"""The chat's runner protocol and `edgesmith serve` on the emulated board (real sshd) and phone
(real adb server): a stop line ends a reply there and the conversation goes on on the same KV
cache; a server in front of a device answers as the host's one-shot generate does."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request

import pytest

from edgesmith.runtime.session import run_runner

from emulated_fixtures import *  # noqa: F401,F403
from emulated_fixtures import pytestmark_emulated

pytestmark = [pytestmark_emulated, pytest.mark.slow]


def generate(host_bundle, ids, n):
    return run_runner(host_bundle, ["generate", str(host_bundle), "--tokens", ",".join(map(str, ids)), "-n", str(n)],
                      timeout=120)[-1]["output_ids"]


@pytest.mark.parametrize("name", ["board", "phone"])
def test_a_stopped_reply_keeps_the_conversation_on_device(devices, arm64_bundle, host_bundle, name):
    """What Ctrl-C sends: the `!stop` line right after a turn (over the SSH channel / adb's shell
    protocol, no signal); the reply ends early, and turn 2 continues the same cache."""
    from edgesmith.runtime.runner_chat import RunnerChat
    from edgesmith.runtime.session import RunnerSession

    n = 24
    with RunnerSession(arm64_bundle, devices[name], timeout=300) as session:
        chat = RunnerChat(session, ["-n", str(n)]).start()
        try:
            chat.send([1, 2, 3])
            chat.cancel()
            t1 = chat.wait()
            t2 = chat.turn([t1["output_ids"][-1], 4, 5])
        finally:
            chat.close()
    assert t1["stop_reason"] == "cancelled" and 1 <= len(t1["output_ids"]) < n
    assert t1["output_ids"] == generate(host_bundle, [1, 2, 3], len(t1["output_ids"]))
    assert t1["context_tokens"] == 3 + len(t1["output_ids"]) - 1
    assert t2["stop_reason"] == "length"
    assert t2["output_ids"] == generate(host_bundle, [1, 2, 3, *t1["output_ids"], 4, 5], n)


def test_serve_in_front_of_the_board(devices_yaml, arm64_bundle, host_bundle):
    """`edgesmith serve --device board`: a completion of token ids (random:tiny has no tokenizer)."""
    proc = subprocess.Popen([sys.executable, "-m", "edgesmith", "serve", str(arm64_bundle), "--port", "0",
                             "--device", "board", "--devices", str(devices_yaml)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        for line in proc.stderr:
            if "listening on" in line:
                url = line.split("listening on ", 1)[1].split()[0]
                break
        assert url, "the server ended before listening"
        body = json.dumps({"prompt": [1, 2, 3], "max_tokens": 6, "temperature": 0}).encode()
        req = urllib.request.Request(url + "/completions", data=body, headers={"Content-Type": "application/json"})
        r = json.loads(urllib.request.urlopen(req, timeout=300).read())
        assert r["usage"] == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}
        assert r["choices"][0]["text"] == " ".join(map(str, generate(host_bundle, [1, 2, 3], 6)))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
