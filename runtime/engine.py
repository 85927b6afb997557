"""The Python path: run a host bundle in-process with TVM's Relax VM.

Same calling convention as the C++ runner (runtime/runner/runner.cc): one sequence (id 0) in a
paged KV cache, prefill in chunks of the manifest's prefill_chunk_size (each told the whole
prompt's length), then one decode call per token; every call wrapped in kv_state
begin/end_forward and given its first token's position. Where the context is longer than the
model's sliding window the cache slides and is made of the window's pages only
(compiler/context.py).
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgesmith.compiler.bundle import folder as bundle_io
from edgesmith.compiler.context import cache_tokens, runtime_context, window_keep
from edgesmith.errors import BundleError
from edgesmith.runtime.sampling import Sampler
from edgesmith.targets.tvm_api import TVM_VERSION


@dataclass
class Generation:
    output_ids: list[int]
    prompt_tokens: int
    load_s: float
    prefill_s: float
    decode_s: float
    stopped: str = "length"  # "length" | "eos"
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        n_dec = max(len(self.output_ids) - 1, 0)  # the first new token comes from prefill's logits
        return {
            "output_ids": self.output_ids,
            "prompt_tokens": self.prompt_tokens,
            "load_s": round(self.load_s, 6),
            "prefill_s": round(self.prefill_s, 6),
            "decode_s": round(self.decode_s, 6),
            "prefill_tok_s": round(self.prompt_tokens / self.prefill_s, 3) if self.prefill_s else None,
            "decode_tok_s": round(n_dec / self.decode_s, 3) if self.decode_s and n_dec else None,
            "stopped": self.stopped,
        }


def usable_cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _use_all_cores(tvm) -> None:
    """TVM's CPU pool halves the core count on x86 (it assumes hyper-threads): on a 2-core VM that is
    one thread. Use every core we may run on, unless TVM_NUM_THREADS says otherwise. The pool reads
    the variable when it first starts (on the first parallel kernel); `runtime.config_threadpool`
    was measured slower than this (50 vs 81 prefill tok/s on 2 cores)."""
    import os

    if "TVM_NUM_THREADS" not in os.environ:
        # Ours, not the user's: a runner this process starts later (runtime/transports/local.py)
        # does not inherit it, so it keeps its own choice (a bundle's tuned thread count).
        os.environ["TVM_NUM_THREADS"] = os.environ[ENGINE_THREADS] = str(usable_cores())


ENGINE_THREADS = "EDGESMITH_ENGINE_TVM_THREADS"  # what the engine set TVM_NUM_THREADS to, if it did


class Engine:
    """A loaded host bundle. `logits_*` return float32 numpy vectors of length vocab."""

    def __init__(self, bundle: Path, *, verify: bool = True, context: int | None = None):
        """context: tokens the KV cache holds (None: the bundle's compiled context; never more)."""
        import tvm
        from tvm import relax

        t0 = time.perf_counter()
        self.bundle = Path(bundle)
        self.manifest = bundle_io.read_manifest(self.bundle)
        arch = self.manifest.arch
        if arch != platform.machine():
            raise BundleError(f"bundle {self.bundle} is built for {arch}; this machine is {platform.machine()} — "
                              "run it on a device with --device, or compile with --target host")
        if self.manifest.device is not None:  # TVM's Python has no OpenCL/WebGPU loader, nor our KV builtin
            raise BundleError(f"bundle {self.bundle} runs on a GPU ({self.manifest.device.api}); the Python engine "
                              "runs host bundles only: drop --engine python (the bundle's runner runs it)")
        if self.manifest.tvm_version != TVM_VERSION:
            raise BundleError(f"bundle {self.bundle} was built with TVM {self.manifest.tvm_version}, "
                              f"this runtime is TVM {TVM_VERSION}; recompile it")
        if verify:
            bundle_io.verify(self.bundle, self.manifest)
        self._tvm = tvm
        self.dev = tvm.cpu()
        _use_all_cores(tvm)
        lib = tvm.runtime.load_module(str(self.bundle / "lib" / "model.so"))
        self.vm = relax.VirtualMachine(lib, self.dev)
        g = tvm.get_global_func
        g("vm.builtin.tensor_cache.load")(str(self.bundle / "params"), self.dev.dlpack_device_type(), 0)
        self.params = g("vm.builtin.param_array_from_cache_by_name")(list(self.manifest.params))
        g("vm.builtin.tensor_cache.clear")()
        self._begin = g("vm.builtin.kv_state_begin_forward")
        self._end = g("vm.builtin.kv_state_end_forward")
        self._add = g("vm.builtin.kv_state_add_sequence")
        self._remove = g("vm.builtin.kv_state_remove_sequence")
        self._popn = g("vm.builtin.kv_state_popn")
        kvc = self.manifest.kv_cache
        self.max_len = runtime_context(self.manifest, context)
        self.chunk = kvc.prefill_chunk_size
        # keys a sliding cache keeps (W - 1; 0: it never slides) and the tokens of pages it is made of
        self.window_keep = window_keep(kvc, self.max_len)
        self.cache_tokens = cache_tokens(kvc, self.max_len)
        S = tvm.runtime.ShapeTuple
        self.kv = self.vm["create_paged_kv_cache"](S([1]), S([self.cache_tokens]), S([self.chunk]),
                                                   S([kvc.page_size]), S([1 if self.window_keep else 0]))
        self._slide = g("vm.builtin.attention_kv_cache_enable_sliding_window_for_seq")
        self.config = self.manifest.config  # the architecture's config (Phi3Config)
        self.length = None  # tokens in the current sequence; None = no sequence
        self.load_s = time.perf_counter() - t0

    # -- one sequence -------------------------------------------------------------------------
    def reset(self) -> None:
        if self.length is not None:
            self._remove(self.kv, 0)
        self._add(self.kv, 0)
        if self.window_keep:  # no attention sink
            self._slide(self.kv, 0, self.window_keep, 0)
        self.length = 0

    def _forward(self, fn: str, ids: np.ndarray, *extra) -> np.ndarray:
        tvm = self._tvm
        n = ids.shape[1]
        if self.length + n > self.max_len:
            raise BundleError(f"sequence of {self.length + n} tokens exceeds the context of {self.max_len}; "
                              "shorten the prompt, lower --max-new-tokens, or raise --context")
        self._begin(self.kv, tvm.runtime.ShapeTuple([0]), tvm.runtime.ShapeTuple([n]))
        seq_pos = tvm.runtime.ShapeTuple([self.length])  # the first token's position (model.py)
        out = self.vm[fn](tvm.runtime.tensor(ids, self.dev), self.kv, *extra, seq_pos, self.params)
        self._end(self.kv)
        self.length += n
        return out[0].numpy().reshape(-1)

    def prefill(self, token_ids: list[int]) -> np.ndarray:
        """Start a new sequence with `token_ids`; the last token's logits."""
        if not token_ids:
            raise BundleError("empty prompt: give at least one token")
        vocab = self.config.vocab_size
        bad = [t for t in token_ids if not 0 <= t < vocab]
        if bad:
            raise BundleError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")
        self.reset()
        ids = np.asarray(token_ids, dtype="int32")[None, :]
        # every chunk is told the whole prompt's length: longrope picks its factors by it, as a
        # single forward over the prompt would (compiler/models/phi3/model.py, prefill)
        total = self._tvm.runtime.ShapeTuple([ids.shape[1]])
        for start in range(0, ids.shape[1], self.chunk):
            logits = self._forward("prefill", ids[:, start:start + self.chunk], total)
        return logits

    def decode(self, token_id: int) -> np.ndarray:
        return self._forward("decode", np.array([[token_id]], dtype="int32"))

    def rewind(self, n: int) -> None:
        """Drop the sequence's last n tokens from the KV cache (a benchmark decodes the same
        positions again without a new prefill)."""
        if self.length is None or not 0 <= n <= self.length:
            raise BundleError(f"cannot rewind {n} tokens of a sequence of {self.length or 0}")
        if self.window_keep and self.length > self.window_keep:
            # the keys before the window are gone: the positions rewound to would miss them
            raise BundleError(f"cannot rewind a sequence of {self.length} tokens whose cache has slid past its "
                              f"window ({self.window_keep + 1} tokens); prefill it again instead")
        self._popn(self.kv, 0, n)
        self.length -= n

    def generate(self, prompt: list[int], max_new_tokens: int, sampler: Sampler | None = None,
                 stop_ids: tuple[int, ...] = (), on_token=None) -> Generation:
        sampler = sampler or Sampler()
        t0 = time.perf_counter()
        logits = self.prefill(prompt)
        t1 = time.perf_counter()
        out: list[int] = []
        stopped = "length"
        while len(out) < max_new_tokens:
            if not np.isfinite(logits).all():  # NaN weights would sample token 0 forever
                where = "after the prompt" if not out else f"at decode step {len(out)}"
                raise BundleError(f"the logits {where} are not finite (NaN or infinite): the model's weights "
                                  "hold NaN or infinite values (check the checkpoint), or the bundle is damaged; "
                                  "recompile it")
            tok = sampler(logits)
            out.append(tok)
            if on_token:
                on_token(tok)
            if tok in stop_ids:
                stopped = "eos"
                break
            if len(out) == max_new_tokens:
                break
            logits = self.decode(tok)
        t2 = time.perf_counter()
        return Generation(out, len(prompt), self.load_s, t1 - t0, t2 - t1, stopped)
