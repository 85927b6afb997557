"""`random:<preset>[:layers=N][:seed=S]`: a checkpoint of the exact public shape with random weights.

The presets come from the model registry (each architecture's own, e.g. models/phi3/presets.py).

Same speed as the real model, no download. Each tensor comes from its own PCG64 stream seeded
from (seed, sha256(name)), so its values do not depend on which tensors were read before or in
what order. Matrices (embedding included) are N(0, 0.02^2); norm weights are 1 + N(0, 0.02^2).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from edgesmith.errors import ConfigError, unknown_name

from .config import parse_config
from edgesmith.compiler.bundle.manifest import TokenizerInfo
from edgesmith.compiler.models import RANDOM_PRESETS, for_config
from .checkpoint import RANDOM_PREFIX, Checkpoint, expected_shapes

GENERATOR_VERSION = "v1"
_CHUNK = 1 << 20  # elements per random stream; part of the values' definition, never change silently  # bump when the values for a given (preset, seed) change


def list_presets() -> list[str]:
    return list(RANDOM_PRESETS)


class RandomCheckpoint(Checkpoint):
    source_format = "random"

    def __init__(self, preset: str, layers: int | None = None, seed: int = 0):
        if preset not in RANDOM_PRESETS:
            raise ConfigError(unknown_name("random preset", preset, RANDOM_PRESETS))
        raw = dict(RANDOM_PRESETS[preset])
        if layers is not None:
            raw["num_hidden_layers"] = layers
        self.preset, self.layers, self.seed = preset, layers, seed
        self.config = parse_config(raw, where=f"random preset {preset!r}")
        self._shapes = expected_shapes(self.config)
        self._pick_tokenizer(preset)
        self.spec = RANDOM_PREFIX + preset + (f":layers={layers}" if layers is not None else "") + f":seed={seed}"
        self.description = f"random:{preset}" + (f":layers={layers}" if layers is not None else "") + f" (seed {seed})"

    def _pick_tokenizer(self, preset: str) -> None:
        """Random weights, real tokenizer: the architecture's tokenizer builder says which presets
        carry the tokenizer it built (none is made here), and why the others have none."""
        builder = for_config(self.config).tokenizer
        if builder is None:
            self.tokenizer_entry = TokenizerInfo(note=f"random:{preset}: its architecture has no tokenizer to attach")
            return
        folder, self.tokenizer_entry = builder.for_random(self.config, preset)
        if folder is not None:
            self.tokenizer_path = folder / "tokenizer.json"
            self.tokenizer_files = (folder / "tokenizer_config.json",)

    @classmethod
    def from_spec(cls, spec: str) -> "RandomCheckpoint":
        parts = spec[len(RANDOM_PREFIX) :].split(":")
        preset, options = parts[0], {}
        for part in parts[1:]:
            key, sep, value = part.partition("=")
            if not sep or key not in ("layers", "seed") or key in options:
                raise ConfigError(f"{spec!r}: option {part!r} is not understood — use random:<preset>[:layers=N][:seed=S]")
            options[key] = value
        if preset not in RANDOM_PRESETS:
            raise ConfigError(f"{spec!r}: " + unknown_name("random preset", preset, RANDOM_PRESETS))
        layers = _int_option(spec, "layers", options.get("layers"), minimum=1)
        seed = _int_option(spec, "seed", options.get("seed"), minimum=0)
        return cls(preset, layers=layers, seed=0 if seed is None else seed)

    def _read(self, name: str) -> np.ndarray:
        words = np.frombuffer(hashlib.sha256(name.encode()).digest(), dtype="<u4").tolist()
        shape = self._shapes[name]
        out = np.empty(shape, dtype=np.float32)
        flat = out.reshape(-1)
        norm = len(shape) == 1  # RMSNorm weights sit around 1

        def fill(chunk: int) -> None:
            # One stream per fixed-size chunk: values do not depend on the thread count.
            seq = np.random.SeedSequence([self.seed, *words, chunk])
            part = flat[chunk * _CHUNK : (chunk + 1) * _CHUNK]
            np.random.Generator(np.random.PCG64(seq)).standard_normal(out=part, dtype=np.float32)
            part *= np.float32(0.02)
            if norm:
                part += np.float32(1.0)

        chunks = range(-(-flat.size // _CHUNK))
        if len(chunks) == 1:
            fill(0)
        else:  # numpy's generators release the GIL while filling
            list(_pool().map(fill, chunks))
        return out

    def fingerprint(self) -> str:
        # Values depend only on the preset's config, the seed and the generator version.
        h = hashlib.sha256(f"edgesmith-random-{GENERATOR_VERSION}\0{self.seed}\0".encode())
        h.update(repr(sorted(self.config.to_dict().items())).encode())
        return h.hexdigest()


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="random-weights")


def _int_option(spec: str, key: str, value: str | None, minimum: int) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        n = None
    if n is None or n < minimum:
        raise ConfigError(f"{spec!r}: {key}={value!r} must be an integer >= {minimum} (e.g. :{key}={max(minimum, 4)})")
    return n
