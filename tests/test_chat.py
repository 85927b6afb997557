"""The chat (`run --interactive`) as a person meets it: in a real terminal (tmux) with line editing,
history, Ctrl-C mid-reply and Ctrl-D; piped, with /commands, the context filling up, --prompt-file.
Replies are checked against one-shot `runner generate` runs of the same ids (greedy), never
against the chat's own bookkeeping: what the cache must hold is rebuilt here from the records."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

BOS, END, USER, ASSISTANT = 1, 32007, 32010, 32001

pytestmark = pytest.mark.slow


def edgesmith(*args, stdin=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "edgesmith", *map(str, args)], capture_output=True, text=True,
                          input=stdin, timeout=timeout)


SAME = 32  # tokens of a chat reply compared with the one-shot reference


def one_shot(bundle, ids: list[int], n: int) -> list[int]:
    """The reference: a plain greedy `runner generate` of `ids` (no chat, no conversation)."""
    from edgesmith.runtime.session import run_runner

    return run_runner(bundle, ["generate", str(bundle), "--tokens", ",".join(map(str, ids)), "-n", str(n)],  # no --stop-ids: it never stops early
                      timeout=300)[-1]["output_ids"]


def user_turn(tok, text: str) -> list[int]:
    return [USER, *tok.encode(text, special=False), END, ASSISTANT]


@pytest.fixture(scope="module")
def tok(phi3_chat_bundle):
    from edgesmith.runtime.text import Tokenizer

    return Tokenizer(phi3_chat_bundle, "bundle")


class Tmux:
    """A real terminal: the command in a tmux pane on a private server; keys in, the screen out."""

    def __init__(self, command: str, tmp_path):
        if shutil.which("tmux") is None:
            pytest.fail("tmux is not installed (scripts/install.sh installs it)")
        self.socket = f"edgesmith-test-{uuid.uuid4().hex[:8]}"
        self.done = tmp_path / f"exit-{self.socket}"
        script = f"{command}; echo $? > {self.done}; sleep 600"
        self.tmux("new-session", "-d", "-x", "160", "-y", "50", "bash", "-c", script)

    def tmux(self, *args) -> str:
        return subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args], capture_output=True, text=True,
                              check=True, timeout=30).stdout

    def keys(self, *keys: str, literal: bool = False) -> None:
        self.tmux("send-keys", "-t", "0", *(["-l"] if literal else []), *keys)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "0")

    def wait_for(self, predicate, what: str, timeout: float = 300):
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            text = self.screen()
            if predicate(text):
                return text
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; the terminal shows:\n{self.screen()}")

    def records(self) -> list[dict]:
        # A record can follow the terminal's echo of the Ctrl-C ("^C{...}").
        return [json.loads(line[line.index('{"turn"'):]) for line in self.screen().splitlines() if '{"turn"' in line]

    def exit_code(self, timeout: float = 60) -> int:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.done.exists() and self.done.read_text().strip():
                return int(self.done.read_text())
            time.sleep(0.2)
        raise AssertionError(f"the chat did not end; the terminal shows:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)


def prompt_ready(screen: str, turns: int) -> bool:
    """The `> ` prompt is back after `turns` turn records."""
    lines = [line for line in screen.splitlines() if line.strip()]
    return sum('{"turn"' in line for line in lines) >= turns and bool(lines) and lines[-1].startswith(">")


def test_chat_in_a_terminal_edits_lines_stops_replies_and_remembers(phi3_chat_bundle, tok, tmp_path):
    """Typing with arrow keys, Ctrl-C mid-reply, history (Up), a second turn on the same KV cache whose
    tokens equal a one-shot generate of the whole conversation; Ctrl-C at the prompt keeps the chat,
    Ctrl-D leaves with exit 0."""
    n = 3000  # a reply far longer than the wait before the Ctrl-C
    env = f"EDGESMITH_CACHE={os.environ['EDGESMITH_CACHE']}"
    term = Tmux(f"cd {os.getcwd()} && {env} {sys.executable} -m edgesmith run {phi3_chat_bundle} --interactive "
                f"-n {n} --ignore-eos --json", tmp_path)
    try:
        term.wait_for(lambda s: prompt_ready(s, 0), "the first prompt")
        term.keys("Hello wrld", literal=True)
        term.keys("Left", "Left", "Left")
        term.keys("o", literal=True)  # "Hello world": the arrows moved the cursor, they are not text
        term.keys("Enter")
        time.sleep(3)
        term.keys("C-c")  # mid-reply: the reply stops, the chat stays
        term.wait_for(lambda s: prompt_ready(s, 1), "turn 1's record and the prompt")
        term.keys("Up")  # history: "Hello world" again
        term.keys(" again", literal=True)
        term.keys("Enter")
        time.sleep(3)
        term.keys("C-c")
        term.wait_for(lambda s: prompt_ready(s, 2), "turn 2's record and the prompt")
        term.keys("half a line", literal=True)
        term.keys("C-c")  # at the prompt: the line goes, the chat stays
        term.wait_for(lambda s: "Ctrl-D or /bye leaves" in s, "the hint after Ctrl-C at the prompt")
        term.keys("C-d")
        assert term.exit_code() == 0
        t1, t2 = term.records()
    finally:
        term.close()
    assert t1["prompt_ids"] == [BOS, *user_turn(tok, "Hello world")]
    assert t1["stop_reason"] == t2["stop_reason"] == "cancelled"
    assert 0 < len(t1["output_ids"]) < n and 0 < len(t2["output_ids"]) < n
    # Turn 2 feeds only what is new, led by reply 1's last token (sampled, not yet in the cache) ...
    assert t2["prompt_ids"] == [t1["output_ids"][-1], END, *user_turn(tok, "Hello world again")]
    # ... and its tokens are a plain generate's of the whole conversation: it remembers turn 1. The
    # first SAME tokens only: the chat decoded reply 1 a token at a time where the one-shot prefills
    # it, and int8 activations round the two paths apart, so a long greedy path of random weights
    # may part at a near tie (seen once after 151 tokens; how long the reply gets depends on timing).
    whole = t1["prompt_ids"] + t1["output_ids"][:-1] + t2["prompt_ids"]
    same = min(SAME, len(t2["output_ids"]))
    assert t2["output_ids"][:same] == one_shot(phi3_chat_bundle, whole, same)
    assert t2["context_tokens"] == len(whole) + len(t2["output_ids"]) - 1


def test_chat_in_a_terminal_speaks(phi3_chat_bundle, tmp_path):
    """Without --json: the banner (device, context), the reply streamed as text, /stats, /bye."""
    env = f"EDGESMITH_CACHE={os.environ['EDGESMITH_CACHE']}"
    term = Tmux(f"{env} {sys.executable} -m edgesmith run {phi3_chat_bundle} --interactive -n 6 --ignore-eos "
                "--system 'Answer briefly.'", tmp_path)
    try:
        screen = term.wait_for(lambda s: s.rstrip().endswith(">"), "the prompt")
        assert "edgesmith chat" in screen and "on host" in screen and "context 4096 tokens" in screen
        assert "system prompt set" in screen
        term.keys("Hi", literal=True)
        term.keys("Enter")
        term.wait_for(lambda s: "[turn 1: " in s and s.rstrip().endswith(">"), "turn 1")
        term.keys("/stats", literal=True)
        term.keys("Enter")
        screen = term.wait_for(lambda s: "turns 1 · context" in s, "/stats")
        term.keys("/bye", literal=True)
        term.keys("Enter")
        assert term.exit_code() == 0
    finally:
        term.close()
    assert "6 generated" in screen


def test_piped_chat_drops_the_oldest_turns_when_the_context_fills(phi3_chat_bundle, tok):
    """--context 44, 8 new tokens a reply: turn 3 does not fit after two turns, so turn 1 is dropped
    (one line says so) and the rest is read again on an empty cache; its reply equals a one-shot
    generate of exactly those ids. --context-policy stop ends with today's error instead."""
    turns = "First question here?\nSecond question here?\nThird question here?\n"
    p = edgesmith("run", phi3_chat_bundle, "--interactive", "--context", "44", "-n", "8", "--ignore-eos", "--json",
                  stdin=turns)
    assert p.returncode == 0, p.stderr
    t1, t2, t3 = [json.loads(line) for line in p.stdout.splitlines()]
    assert "[context full: dropped the oldest 1 turn" in p.stderr
    assert t2["context_tokens"] + 1 + len(user_turn(tok, "Third question here?")) + 8 > 44  # it could not fit
    # Turn 3 starts a new sequence: turn 2 and turn 3, from <s>, without turn 1.
    reply2 = tok.decode(t2["output_ids"])
    expected_start = [BOS, *user_turn(tok, "Second question here?")]
    assert t3["prompt_ids"][:len(expected_start)] == expected_start
    assert t3["prompt_ids"][-len(user_turn(tok, "Third question here?")):] == user_turn(tok, "Third question here?")
    assert "First question" not in tok.decode(t3["prompt_ids"]) and reply2 in tok.decode(t3["prompt_ids"])
    assert t3["context_tokens"] == len(t3["prompt_ids"]) + 7
    assert t3["output_ids"] == one_shot(phi3_chat_bundle, t3["prompt_ids"], 8)

    stop = edgesmith("run", phi3_chat_bundle, "--interactive", "--context", "44", "-n", "8", "--ignore-eos",
                     "--context-policy", "stop", stdin=turns)
    assert stop.returncode == 1
    assert "exceed the context of 44 tokens" in stop.stderr and "Traceback" not in stop.stderr


def test_prompt_file_and_inputs_that_conflict(phi3_chat_bundle, tmp_path, tok):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("The capital of France is\n")
    p = edgesmith("run", phi3_chat_bundle, "-f", prompt, "-n", "4", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["prompt_ids"] == tok.encode("The capital of France is")
    bare = edgesmith("run", phi3_chat_bundle)
    assert bare.returncode == 2 and "--prompt" in bare.stderr and "--interactive" in bare.stderr
    both = edgesmith("run", phi3_chat_bundle, "--prompt", "hi", "--tokens", "1,2")
    assert both.returncode == 2 and "--prompt and --tokens" in both.stderr
    missing = edgesmith("run", phi3_chat_bundle, "-f", tmp_path / "nope.txt")
    assert missing.returncode == 1 and "nope.txt" in missing.stderr and "Traceback" not in missing.stderr


def test_a_device_run_shows_a_status_line_on_a_terminal_and_erases_it(phi3_chat_bundle, tmp_path):
    """`run --device host` in a terminal: while nothing shows, one status line on stderr (a spinner
    frame, what the device is doing, the seconds), redrawn in place and erased before the reply;
    the screen then holds the text and the timings only. Piped, there is no status line at all."""
    import re

    raw = tmp_path / "raw.bin"
    env = f"EDGESMITH_CACHE={os.environ['EDGESMITH_CACHE']}"
    run = f"run {phi3_chat_bundle} --device host --prompt 'The capital of France is' -n 8 --ignore-eos"
    term = Tmux(f"sleep 1; {env} {sys.executable} -m edgesmith {run}", tmp_path)
    try:
        term.tmux("pipe-pane", "-o", "-t", "0", f"cat >> {raw}")  # every byte the command writes to the terminal
        assert term.exit_code() == 0, term.screen()
        screen = term.screen()
    finally:
        term.close()
    out = raw.read_bytes().decode("utf-8", "replace")
    frame = r"\r[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏] "
    drawn = re.findall(frame + r"(.+?) \((\d+\.\d) s\)\x1b\[K", out)
    kinds = {re.sub(r"\d+", "N", what) for what, _ in drawn}
    assert drawn and kinds <= {"connecting to host and pushing the bundle", "loading the model on host",
                               "prefill of N prompt tokens on host"}, out[:2000]
    assert "connecting to host and pushing the bundle" in {what for what, _ in drawn}
    last_draw = max(m.end() for m in re.finditer(frame, out))
    erased = out.index("\r\x1b[K", last_draw)
    assert erased < out.index("\n[prompt "), out[-2000:]  # erased before the reply and its timings
    assert "[prompt " in screen and "generated 8 tokens" in screen
    assert not any(what in screen for what, _ in drawn) and not re.search("[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏]", screen), screen

    piped = edgesmith("run", phi3_chat_bundle, "--device", "host", "--prompt", "The capital of France is", "-n", "8",
                      "--ignore-eos")
    assert piped.returncode == 0 and "generated 8 tokens" in piped.stderr, piped.stderr
    assert "\r" not in piped.stderr and not re.search("[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏]", piped.stderr), piped.stderr
