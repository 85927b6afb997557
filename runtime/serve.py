"""`edgesmith serve`: an OpenAI-compatible HTTP API in front of one bundle on one device.

Routes (Starlette; uvicorn serves them, edgesmith/cli/serve.py starts it):
  GET  /v1/models              the one model: its id is the bundle folder's name
  POST /v1/chat/completions    messages through the bundle's chat template, reply until its end
                               token (Phi-3: <|end|>), max_tokens or a `stop` string
  POST /v1/completions         a plain prompt (text, or a list of token ids)
Both stream as server-sent events with "stream": true (chunks, then `data: [DONE]`).

One runner holds the model (runtime/runner_chat.py: `runner generate --interactive` through the
one RunnerSession, here, under qemu, over SSH or ADB). Requests take turns on it (one worker
thread, first come first served: a turn is over, its record read, before the next starts); each is a turn with "reset" (a new sequence: requests share nothing)
and its own n, temperature, top_p, seed and stop ids. A client that goes away while its request
waits leaves the queue; while it generates, its generation is cancelled (the runner's `!stop`
line) and the next request starts. Bad requests are answered 400 with OpenAI's JSON error shape
({"error": {"message", "type", "param", "code"}}), before anything reaches the device.
"""
from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from edgesmith.errors import EdgesmithError
from edgesmith.runtime.chat import render, stop_ids
from edgesmith.runtime.runner_chat import RunnerChat

DEFAULT_MAX_TOKENS = 256  # per request when max_tokens is not given (at most what the context leaves)


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class Model:
    """The bundle's runner and tokenizer, and what a request becomes for them."""

    def __init__(self, session, manifest, tok, name: str, *, context: int | None = None):
        self.session, self.manifest, self.tok, self.name = session, manifest, tok, name
        self.limit = context or manifest.kv_cache.max_total_seq_len
        self.vocab = manifest.config.vocab_size
        self.eos = set(manifest.config.eos_token_ids or ())
        self.chat_stops = stop_ids(tok, sorted(self.eos)) if tok is not None else set(self.eos)
        self.context_args = ["--context", str(context)] if context else []
        self.runner: RunnerChat | None = None
        self.created = int(time.time())
        # The one thread that talks to the runner: requests queue here, in order of arrival.
        self.queue = ThreadPoolExecutor(max_workers=1, thread_name_prefix="serve-turns")

    def start(self) -> None:
        """(Re)start the runner: at start-up, and after it ended (a failed turn ends it)."""
        self.runner = RunnerChat(self.session, self.context_args).start()

    def close(self) -> None:
        self.queue.shutdown(wait=False, cancel_futures=True)
        if self.runner is not None:
            self.runner.close()

    def run_turn(self, gen: Generation, ids: list[int], options: dict) -> None:
        """On the queue's thread: `gen`'s turn, start to record, unless its client left first."""
        try:
            if gen.cancelled:
                return
            if self.runner is None or not self.runner.alive:
                self.start()  # not under the mutex: cancel() (the event loop) must never wait for a load
            with gen.mutex:
                if gen.cancelled:
                    return
                gen.started = True
                self.runner.send(ids, on_token=gen.on_token, reset=True, options=options)
            record = self.runner.wait()
            gen.put("done", record)
            why = "the client left: cancelled" if gen.cancelled else record["stop_reason"]
            self.log(f"{gen.rid}: {len(ids)} prompt tokens, {len(record['output_ids'])} generated "
                     f"({why}), {record.get('decode_tok_s') or 0:.1f} tok/s")
        except BaseException as err:  # noqa: BLE001 - handed to the request
            gen.put("error", err)
            self.log(f"{gen.rid}: failed: {err}")
        finally:
            gen.finished = True
            if gen.cancelled and not gen.started:
                self.log(f"{gen.rid}: the client left before its turn")

    @staticmethod
    def log(line: str) -> None:
        """One line a request on stderr (the server's log)."""
        print(f"edgesmith serve: {line}", file=sys.stderr, flush=True)

    def cancel(self, gen: Generation) -> None:
        """`gen`'s client left: it never starts, or its reply ends at the runner's next token."""
        with gen.mutex:
            if gen.finished:
                return
            gen.cancelled = True
            started = gen.started
        if started and self.runner is not None:
            self.runner.cancel()

    # ---------------------------------------------------------------- requests into ids

    def chat_ids(self, body: dict) -> list[int]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty list of {\"role\", \"content\"} objects", "messages")
        clean = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                raise BadRequest(f"messages[{i}] needs a role of 'system', 'user' or 'assistant'", "messages")
            content = m.get("content")
            if isinstance(content, list):  # [{"type": "text", "text": ...}]: text parts only
                if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                    raise BadRequest(f"messages[{i}].content: only text parts are supported by this model",
                                     "messages")
                content = "".join(str(p.get("text", "")) for p in content)
            if not isinstance(content, str):
                raise BadRequest(f"messages[{i}].content must be a string", "messages")
            clean.append({"role": m["role"], "content": content})
        if self.tok is None or not self.tok.chat_template:
            raise BadRequest(f"model '{self.name}' has no chat template (no tokenizer in the bundle); "
                             "use /v1/completions with token ids", "messages")
        try:
            text = render(self.tok.chat_template, _system_first(clean, self._has_system_role()),
                          add_generation_prompt=True, bos=self.tok.bos_token, eos=self.tok.eos_token)
        except EdgesmithError as err:
            raise BadRequest(str(err), "messages") from None
        return self.tok.encode(text, special=False)

    def _has_system_role(self) -> bool:
        if not hasattr(self, "_system_role"):
            marker = "\x00edgesmith-system\x00"
            text = render(self.tok.chat_template, [{"role": "system", "content": marker},
                                                   {"role": "user", "content": "hi"}],
                          add_generation_prompt=True, bos=self.tok.bos_token, eos=self.tok.eos_token)
            self._system_role = marker in text
        return self._system_role

    def completion_ids(self, body: dict) -> list[int]:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # the client's batch of one
        if isinstance(prompt, str):
            if self.tok is None:
                raise BadRequest(f"model '{self.name}' has no tokenizer: give 'prompt' as a list of token ids",
                                 "prompt")
            if not prompt:
                raise BadRequest("'prompt' is empty", "prompt")
            return self.tok.encode(prompt)
        if isinstance(prompt, list) and prompt and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt):
            bad = [i for i in prompt if not 0 <= i < self.vocab]
            if bad:
                raise BadRequest(f"token id {bad[0]} is outside the vocabulary (0..{self.vocab - 1})", "prompt")
            return list(prompt)
        raise BadRequest("'prompt' must be a string or a list of token ids (one prompt per request)", "prompt")

    def options(self, body: dict, prompt_tokens: int, stops: set[int]) -> dict:
        """The runner's per-turn options, checked: n, temperature, top_p, seed, stop_ids."""
        room = self.limit - prompt_tokens
        if room < 1:
            raise BadRequest(f"the prompt is {prompt_tokens} tokens; the context holds {self.limit}: shorten it",
                             "messages" if "messages" in body else "prompt")
        n = body.get("max_completion_tokens", body.get("max_tokens"))
        if n is None:
            n = min(DEFAULT_MAX_TOKENS, room)
        elif not _is_int(n) or n < 1:
            raise BadRequest(f"'max_tokens' must be a positive integer, got {n!r}", "max_tokens")
        elif n > room:
            raise BadRequest(f"the prompt ({prompt_tokens} tokens) + max_tokens {n} exceed the context of "
                             f"{self.limit} tokens; ask for at most {room}", "max_tokens")
        temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
        top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
        if top_p == 0.0:
            raise BadRequest("'top_p' must be above 0", "top_p")
        out = {"n": int(n), "temperature": temperature, "top_p": top_p, "stop_ids": sorted(stops)}
        seed = body.get("seed")
        if seed is not None:
            if not _is_int(seed) or seed < 0:
                raise BadRequest(f"'seed' must be a non-negative integer, got {seed!r}", "seed")
            out["seed"] = int(seed) % 2**63
        if body.get("n", 1) != 1:
            raise BadRequest("'n' (several choices) is not supported: one choice per request", "n")
        return out


def _system_first(messages: list[dict], has_role: bool) -> list[dict]:
    """A template without a system role (Phi-3-mini's) would drop it: it goes before the first user
    message instead (as `run --system` does)."""
    if has_role:
        return messages
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [m for m in messages if m["role"] != "system"]
    if system and rest and rest[0]["role"] == "user":
        rest[0] = {"role": "user", "content": f"{system}\n\n{rest[0]['content']}"}
    elif system:
        rest.insert(0, {"role": "user", "content": system})
    return rest


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(body: dict, key: str, default: float, lo: float, hi: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise BadRequest(f"'{key}' must be a number from {lo:g} to {hi:g}, got {v!r}", key)
    return float(v)


def _stop_strings(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise BadRequest("'stop' must be a string or a list of up to 4 non-empty strings", "stop")
    return stop


class Generation:
    """One request's turn on the runner: its tokens as text pieces, on the event loop's queue."""

    def __init__(self, model: Model, loop: asyncio.AbstractEventLoop, stop_strings: list[str], stops: set[int],
                 rid: str = "request"):
        self.model, self.loop, self.stop_strings, self.stops, self.rid = model, loop, stop_strings, stops, rid
        self.queue: asyncio.Queue = asyncio.Queue()
        self.ids: list[int] = []
        self.text = ""  # what has been handed out
        self.stopped_by_string = False
        self.mutex = threading.Lock()
        self.cancelled = self.started = self.finished = False

    def put(self, kind: str, value) -> None:  # any thread
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is gone (the server is stopping)
            pass

    def on_token(self, token: int) -> None:  # the runner's thread
        self.put("token", token)

    def piece(self, token: int) -> str:
        """The new text after `token` ('' while a character is incomplete, or after a stop string)."""
        if self.stopped_by_string:
            return ""
        self.ids.append(token)
        if token in self.stops:
            return ""
        tok = self.model.tok
        full = tok.decode([i for i in self.ids if i not in self.stops]) if tok is not None else \
            " ".join(map(str, self.ids))
        for s in self.stop_strings:
            at = full.find(s)
            if at >= 0:
                full, self.stopped_by_string = full[:at], True
                self.model.runner.cancel()
        if full.endswith("\ufffd") and not self.stopped_by_string:
            return ""
        # Hold back what could be the start of a stop string.
        hold = max((k for s in self.stop_strings for k in range(1, len(s)) if full.endswith(s[:k])), default=0)
        if self.stopped_by_string:
            hold = 0
        if not full.startswith(self.text):
            return ""
        visible = full[:len(full) - hold] if hold else full
        new, self.text = visible[len(self.text):], max(self.text, visible, key=len)
        return new

    def rest(self, record: dict) -> str:
        """What was held back, once the turn is over."""
        if self.stopped_by_string or self.model.tok is None:
            return ""
        full = self.model.tok.decode([i for i in self.ids if i not in self.stops])
        return full[len(self.text):] if full.startswith(self.text) else ""

    def finish_reason(self, record: dict) -> str:
        if self.stopped_by_string or record["stop_reason"] == "stop":
            return "stop"
        return "length" if record["stop_reason"] == "length" else "stop"


def build_app(model: Model):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    def error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}},
                            status_code=status)

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [
            {"id": model.name, "object": "model", "created": model.created, "owned_by": "edgesmith",
             "context_length": model.limit}]})

    async def read_body(request: Request) -> dict:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadRequest("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        want = body.get("model")
        if want is not None and want != model.name:
            raise BadRequest(f"model '{want}' is not served here; this server serves '{model.name}' "
                             "(GET /v1/models)", "model")
        return body

    async def completions(request: Request, chat: bool):
        try:
            body = await read_body(request)
            ids = model.chat_ids(body) if chat else model.completion_ids(body)
            stops = model.chat_stops if chat else model.eos
            options = model.options(body, len(ids), stops)
            stop_strings = _stop_strings(body)
            stream = bool(body.get("stream", False))
        except BadRequest as err:
            return error(400, str(err), err.param)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        kind = "chat.completion" if chat else "text_completion"
        gen = Generation(model, asyncio.get_running_loop(), stop_strings, stops, rid)
        if stream:
            return StreamingResponse(_sse(model, request, gen, ids, options, rid, kind, chat),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            record, text = await _generate(model, request, gen, ids, options)
        except EdgesmithError as err:
            return error(500, str(err), kind="server_error")
        if record is None:  # the client left
            return error(499, "the client closed the request")
        usage = _usage(len(ids), gen)
        reason = gen.finish_reason(record)
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
                  if chat else {"index": 0, "text": text, "finish_reason": reason, "logprobs": None})
        return JSONResponse({"id": rid, "object": kind, "created": int(time.time()), "model": model.name,
                             "choices": [choice], "usage": usage,
                             "timings": _timings(record)})

    async def chat_completions(request: Request):
        return await completions(request, chat=True)

    async def text_completions(request: Request):
        return await completions(request, chat=False)

    app = Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat_completions, methods=["POST"]),
                            Route("/v1/completions", text_completions, methods=["POST"])])
    return app


def _usage(prompt_tokens: int, gen: Generation) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": len(gen.ids),
            "total_tokens": prompt_tokens + len(gen.ids)}


def _timings(record: dict) -> dict:
    return {k: record.get(k) for k in ("prefill_tok_s", "decode_tok_s", "prefill_s", "decode_s")}


async def _turn(model: Model, request, gen: Generation, ids: list[int], options: dict):
    """Yields ("token", id) as they come, then ("done", record). The turn waits in the model's
    one-thread queue; closing (or cancelling) the generator cancels it there or on the runner."""
    asyncio.get_running_loop().run_in_executor(model.queue, model.run_turn, gen, ids, options)
    over = False
    try:
        while True:
            kind, value = await gen.queue.get()
            over = kind in ("done", "error")
            if kind == "error":
                raise value if isinstance(value, EdgesmithError) else EdgesmithError(f"the runner failed: {value}")
            yield kind, value
            if kind == "done":
                return
    finally:
        if not over:  # the client left (the generator was closed or cancelled before the end)
            model.cancel(gen)


async def _generate(model, request, gen: Generation, ids, options):
    """Non-streaming: the whole text and the record (None, None if the client left)."""
    text, record = "", None
    turn = _turn(model, request, gen, ids, options)
    watcher = asyncio.ensure_future(_watch_disconnect(request))
    reader = asyncio.ensure_future(_collect(turn, gen))
    finished, _ = await asyncio.wait({watcher, reader}, return_when=asyncio.FIRST_COMPLETED)
    if reader not in finished:  # the client left: cancel its turn (the generator's finally stops it)
        reader.cancel()
        try:
            await reader
        except asyncio.CancelledError:
            pass
        return None, None
    watcher.cancel()
    text, record = reader.result()
    return record, text


async def _collect(turn, gen: Generation):
    text, record = "", None
    async for kind, value in turn:
        if kind == "token":
            text += gen.piece(value)
        else:
            record = value
            text += gen.rest(record)
    return text, record


async def _watch_disconnect(request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.1)


async def _sse(model, request, gen: Generation, ids, options, rid, kind, chat: bool):
    created = int(time.time())
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(piece: str | None, reason: str | None = None, first: bool = False) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if first else ({"content": piece} if piece else {})
            choice = {"index": 0, "delta": delta, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": piece or "", "finish_reason": reason, "logprobs": None}
        return "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": model.name,
                                      "choices": [choice]}) + "\n\n"

    if chat:
        yield chunk(None, first=True)
    try:
        async for what, value in _turn(model, request, gen, ids, options):
            if what == "token":
                piece = gen.piece(value)
                if piece:
                    yield chunk(piece)
            else:
                rest = gen.rest(value)
                if rest:
                    yield chunk(rest)
                final = json.loads(chunk(None, gen.finish_reason(value))[6:])
                final["usage"] = _usage(len(ids), gen)
                yield "data: " + json.dumps(final) + "\n\n"
                yield "data: [DONE]\n\n"
    except EdgesmithError as err:
        yield "data: " + json.dumps({"error": {"message": str(err), "type": "server_error", "param": None,
                                               "code": None}}) + "\n\n"
