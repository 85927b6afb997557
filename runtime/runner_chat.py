"""A conversation with a bundle's runner: `runner generate --interactive` kept running on a thread of
its own (through the one RunnerSession: here, under qemu, over SSH or ADB), fed one turn at a time.

The protocol is lines on the runner's stdin (runner.cc, section "interactive"): a turn of ids (or a
JSON object with its own options and "reset"), `!stop` to end the reply being generated, `!reset`
for an empty sequence, an empty line to end. The runner answers in JSON lines on stdout: "ready"
once loaded, a "token" per sampled token, a "turn" record closing each turn. A stop is a line, not
a signal, so it reaches the runner the same way on every transport, and the conversation (the KV
cache) survives it.

--timeout counts per turn: the transport's watchdog is paused while no turn is in flight (a person
typing, a server waiting for requests) and given the whole timeout again for the next.
"""
from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable

from edgesmith.errors import EdgesmithError
from edgesmith.runtime.session import RunnerSession
from edgesmith.runtime.transports.base import StdinFeed


class RunnerChat:
    """`session`'s runner in `generate --interactive ARGS --stream`. start(), then send() a turn and
    wait() for its record (cancel() meanwhile ends the reply), reset(), close()."""

    def __init__(self, session: RunnerSession, runner_args: list[str], *, on_record: Callable[[dict], None] | None = None):
        self.session = session
        self.args = ["generate", "--interactive", *runner_args, "--stream"]
        self.on_record = on_record  # every record, as it arrives (the runner thread)
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._feed = StdinFeed(self._chunks())
        self._ready = threading.Event()
        self._turn_done = threading.Event()
        self._record: dict | None = None
        self._on_token: Callable[[int], None] | None = None
        self._error: BaseException | None = None
        self._ended = threading.Event()
        self._in_flight = False
        self.load_s: float | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="runner-chat")

    # ---------------------------------------------------------------- the runner's thread

    def _chunks(self):
        while True:
            line = self._lines.get()
            if line is None:
                yield b"\n"
                return
            yield line

    def _run(self) -> None:
        try:
            self.session.run(self.args, on_line=self._on_line, stdin=self._feed, timeout=self.session.timeout)
        except BaseException as err:  # noqa: BLE001 - handed to the thread that waits
            self._error = err
        finally:
            self._ended.set()
            self._ready.set()
            self._turn_done.set()

    def _on_line(self, record: dict) -> None:
        if self.on_record is not None:
            self.on_record(record)
        if "ready" in record:
            self.load_s = record.get("load_s")
            self._feed.pause()  # nobody has asked anything yet
            self._ready.set()
        elif "token" in record:
            if self._on_token is not None:
                self._on_token(record["token"])
        elif "turn" in record:
            self._record = record
            self._in_flight = False
            self._feed.pause()
            self._turn_done.set()

    # ---------------------------------------------------------------- the caller's side

    def start(self) -> RunnerChat:
        """Start the runner and wait until the model is loaded."""
        self._thread.start()
        _wait(self._ready)
        self._raise_if_ended()
        return self

    def send(self, ids: list[int], *, on_token: Callable[[int], None] | None = None, reset: bool = False,
             options: dict | None = None) -> None:
        """Start a turn: ids appended to the sequence (reset: to a new one), then the reply is
        generated; options: per-turn n, temperature, top_p, seed, stop_ids (the runner's names)."""
        self._raise_if_ended()
        self._record, self._on_token, self._in_flight = None, on_token, True
        self._turn_done.clear()
        if options or reset:
            line = json.dumps({"ids": list(ids), **(options or {}), **({"reset": True} if reset else {})})
        else:
            line = ",".join(map(str, ids))
        self._feed.resume()
        self._lines.put((line + "\n").encode())

    def wait(self) -> dict:
        """The turn's record (output_ids, stop_reason "stop", "length" or "cancelled", timings).
        A KeyboardInterrupt while waiting leaves the turn running: cancel() it, then wait() again."""
        _wait(self._turn_done)
        if self._record is None:
            self._raise_if_ended()
            raise EdgesmithError("the runner ended the conversation without answering the turn")
        return self._record

    def turn(self, ids: list[int], **kwargs) -> dict:
        self.send(ids, **kwargs)
        return self.wait()

    def cancel(self) -> None:
        """End the reply being generated (its record says "cancelled"); nothing when none is."""
        if self._in_flight and not self._ended.is_set():
            self._lines.put(b"!stop\n")

    def reset(self) -> None:
        """An empty sequence: the next turn starts the conversation again (a new KV cache's worth)."""
        self._raise_if_ended()
        self._lines.put(b"!reset\n")

    @property
    def alive(self) -> bool:
        """The runner still runs (a failed turn ends it)."""
        return self._thread.is_alive() and not self._ended.is_set()

    @property
    def busy(self) -> bool:
        return self._in_flight

    def close(self, timeout: float = 30.0) -> None:
        """End the conversation and wait for the runner to leave."""
        if not self._thread.is_alive():
            return
        if self._in_flight:
            self.cancel()
        self._feed.resume()
        self._lines.put(None)
        self._thread.join(timeout)
        if self._error is not None and not isinstance(self._error, KeyboardInterrupt):
            raise self._error

    def _raise_if_ended(self) -> None:
        if self._ended.is_set():
            if self._error is not None:
                err, self._error = self._error, None  # said once
                raise err
            raise EdgesmithError("the runner ended the conversation")


def _wait(event: threading.Event) -> None:
    """Wait in short steps, so that a Ctrl-C reaches the main thread while it waits."""
    while not event.wait(0.1):
        pass
