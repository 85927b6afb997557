"""`edgesmith serve` through the real `openai` client: chat and text completions, streamed and not,
the chat template applied, two clients at once, a stream the client abandons, bad requests.
Every reply is checked against a one-shot greedy `runner generate` of the ids the chat template
(rendered here with transformers' rules: the tokenizer's own template) gives."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

BOS, END, USER, ASSISTANT = 1, 32007, 32010, 32001

pytestmark = pytest.mark.slow


def one_shot(bundle, ids: list[int], n: int) -> list[int]:
    from edgesmith.runtime.session import run_runner

    return run_runner(bundle, ["generate", str(bundle), "--tokens", ",".join(map(str, ids)), "-n", str(n)],
                      timeout=300)[-1]["output_ids"]


@pytest.fixture(scope="module")
def tok(phi3_chat_bundle):
    from edgesmith.runtime.text import Tokenizer

    return Tokenizer(phi3_chat_bundle, "bundle")


class Server:
    """`edgesmith serve BUNDLE --port 0` in a subprocess; its stderr lines collected as they come."""

    def __init__(self, bundle):
        self.proc = subprocess.Popen([sys.executable, "-m", "edgesmith", "serve", str(bundle), "--port", "0"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self.wait_for("listening on").split("listening on ", 1)[1].split()[0]

    def _read(self):
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float = 600) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the server ended before saying {text!r}: {self.log}")
            self.log.append(line)
            if text in line:
                return line
        raise AssertionError(f"the server did not say {text!r} in {timeout} s: {self.log}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server(phi3_chat_bundle):
    s = Server(phi3_chat_bundle)
    yield s
    if s.proc.poll() is None:
        s.proc.kill()
        s.proc.wait()


@pytest.fixture(scope="module")
def client(server):
    import openai

    return openai.OpenAI(base_url=server.url, api_key="not-needed", timeout=600, max_retries=0)


def chat_ids(tok, text: str) -> list[int]:
    return [BOS, USER, *tok.encode(text, special=False), END, ASSISTANT]


def test_models_lists_the_bundle(client, phi3_chat_bundle):
    models = client.models.list().data
    assert [m.id for m in models] == [phi3_chat_bundle.name]


def test_chat_completion_applies_the_template(client, phi3_chat_bundle, tok):
    r = client.chat.completions.create(model=phi3_chat_bundle.name, messages=[{"role": "user", "content": "Hello"}],
                                       max_tokens=8, temperature=0)
    ids = chat_ids(tok, "Hello")
    assert r.usage.prompt_tokens == len(ids) == 5
    ref = one_shot(phi3_chat_bundle, ids, 8)
    if END in ref:  # the template's end of a reply: the reply stops there
        ref = ref[:ref.index(END) + 1]
        assert r.choices[0].finish_reason == "stop"
    else:
        assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == len(ref)
    assert r.choices[0].message.content == tok.decode([i for i in ref if i != END])

    chunks = list(client.chat.completions.create(model=phi3_chat_bundle.name, stream=True, max_tokens=8,
                                                 temperature=0, messages=[{"role": "user", "content": "Hello"}]))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == r.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason


def test_text_completion_and_stop_strings(client, phi3_chat_bundle, tok):
    prompt = "The capital of France is"
    ids = tok.encode(prompt)
    ref_text = tok.decode(one_shot(phi3_chat_bundle, ids, 6))
    r = client.completions.create(model=phi3_chat_bundle.name, prompt=prompt, max_tokens=6, temperature=0)
    assert r.choices[0].text == ref_text and r.usage.prompt_tokens == len(ids)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=phi3_chat_bundle.name, prompt=prompt, max_tokens=6, temperature=0, stream=True))
    assert streamed == ref_text
    # A stop string the reply contains: the text ends before it, finish_reason "stop".
    cut = ref_text[len(ref_text) // 2:len(ref_text) // 2 + 2]
    s = client.completions.create(model=phi3_chat_bundle.name, prompt=prompt, max_tokens=6, temperature=0,
                                  stop=[cut])
    assert s.choices[0].text == ref_text[:ref_text.index(cut)] and s.choices[0].finish_reason == "stop"


def test_two_clients_at_once_get_their_own_replies(client, phi3_chat_bundle, tok):
    """Requests queue on one model; each starts on a fresh sequence, so neither sees the other."""
    prompts = ["One two three", "Paris is a city in"]
    out: dict[str, str] = {}

    def ask(p):
        out[p] = client.completions.create(model=phi3_chat_bundle.name, prompt=p, max_tokens=10,
                                           temperature=0).choices[0].text

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    for p in prompts:
        assert out[p] == tok.decode(one_shot(phi3_chat_bundle, tok.encode(p), 10))


def test_an_abandoned_stream_is_cancelled(client, server, phi3_chat_bundle, tok):
    stream = client.chat.completions.create(model=phi3_chat_bundle.name, stream=True, max_tokens=3000,
                                            temperature=0, messages=[{"role": "user", "content": "Tell a story"}])
    got = 0
    for chunk in stream:
        got += bool(chunk.choices and chunk.choices[0].delta.content)
        if got == 3:
            break
    stream.close()  # the client goes away mid-reply
    line = server.wait_for("the client left")
    generated = int(line.split(" generated")[0].split(", ")[-1])
    assert generated < 3000
    # The model is free again, and the next request is whole.
    r = client.chat.completions.create(model=phi3_chat_bundle.name, messages=[{"role": "user", "content": "Hello"}],
                                       max_tokens=4, temperature=0)
    assert r.choices[0].message.content == tok.decode(one_shot(phi3_chat_bundle, chat_ids(tok, "Hello"), 4))


def test_bad_requests_are_400_with_a_json_error(client, server, phi3_chat_bundle):
    import openai
    import urllib.error
    import urllib.request

    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=phi3_chat_bundle.name, messages=[], max_tokens=4)
    assert err.value.status_code == 400 and "messages" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=phi3_chat_bundle.name, max_tokens=5000,
                                       messages=[{"role": "user", "content": "Hello"}])
    assert "exceed the context of 4096 tokens" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=4)
    assert f"this server serves '{phi3_chat_bundle.name}'" in err.value.message
    req = urllib.request.Request(server.url + "/chat/completions", data=b"not json",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(req, timeout=60)
    assert http.value.code == 400 and b'"invalid_request_error"' in http.value.read()


def test_ctrl_c_stops_the_server(phi3_chat_bundle):
    """A server of its own: the module's stays up for the other tests, whatever their order."""
    own = Server(phi3_chat_bundle)
    try:
        assert own.stop() == 0
        own.wait_for("edgesmith serve: stopped")
    finally:
        if own.proc.poll() is None:
            own.proc.kill()
            own.proc.wait()
