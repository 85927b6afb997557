"""The model registry: one `ModelArchitecture` entry per `architectures` value of config.json.

An entry is everything edgesmith knows about one architecture, each piece in the entry's own
folder (compiler/models/<name>/): how its config.json reads, which tensors its checkpoints hold
(names and shapes), where each parameter of our model comes from in them (the name map, with
fusions), the nn model itself, the `random:` presets of its public shapes, what the runtime asks
of a model (its linear layers, the bytes a token takes in the KV cache and the activations, the
weights a decoded token reads), its tokenizer builder and its ONNX Runtime GenAI mapping. The rest of edgesmith looks an architecture up
here (by its config: `for_config`) and never imports a model folder by name.

Nothing here imports TVM: the CLI reads the registry for its help text. The nn model is loaded
by `ModelArchitecture.model_class()` when a compile traces it.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgesmith.errors import ConfigError

# What a config.json without an `architectures` list is read as (early Phi-3 exports omit it).
DEFAULT_ARCHITECTURE = "Phi3ForCausalLM"


@dataclass(frozen=True)
class ParamSource:
    """Where one parameter of our model comes from in a checkpoint (in its float form).

    hf_names: the checkpoint tensors it is made from, in order.
    combine: how several of them become ours (a fusion: q, k and v stacked by rows); None: the
        one tensor as it is.
    derive: for a parameter no checkpoint holds, its value computed from the config
        (Phi-3's longrope factors); hf_names is then empty.
    """

    hf_names: tuple[str, ...]
    combine: Callable[[list[np.ndarray]], np.ndarray] | None = None
    derive: Callable[[Any], np.ndarray] | None = None

    def read(self, ckpt) -> np.ndarray:
        """The parameter as float32, from `ckpt` (a compiler.source.Checkpoint)."""
        if self.derive is not None:
            return self.derive(ckpt.config)
        parts = [ckpt.read(name) for name in self.hf_names]
        return self.combine(parts) if self.combine is not None else parts[0]

    def read_q4(self, ckpt, group_size: int, scale_dtype: str):
        """The parameter already in our int4 layout when the source stores it so (an int4 ONNX
        export), else None. Only a parameter made of one tensor: a fusion re-quantizes."""
        if self.derive is not None or self.combine is not None or len(self.hf_names) != 1:
            return None
        return ckpt.read_q4(self.hf_names[0], group_size, scale_dtype)


@dataclass(frozen=True)
class LinearShape:
    """One linear layer of a model: y (.., n) = x (.., k) @ W.T; `name` as edgesmith tune reports it."""

    name: str  # "qkv", "lm_head"
    n: int  # output features (W's rows)
    k: int  # input features: the reduction


@dataclass(frozen=True)
class TokenizerBuilder:
    """A tokenizer an architecture builds once from a package of the registry (`edgesmith tokenizer
    fetch`, never at run time) for the bundles of its `random:` presets. `module` provides:
    fetch(say=, force=) -> folder, cached() -> folder or None, missing_message(what),
    for_random(config, preset) -> (folder or None, compiler.bundle.manifest.TokenizerInfo),
    fits(config) -> bool, vocab_size() -> int, attach() -> (folder, TokenizerInfo),
    describe(TokenizerInfo) -> str (edgesmith inspect's line) and summary(folder) -> str (`edgesmith
    tokenizer show`)."""

    vocabulary: str  # its name in a bundle's manifest (tokenizer.vocabulary): "phi-3"
    module: str  # "edgesmith.compiler.models.phi3.tokenizer"

    def _impl(self):  # imported when first asked for: the CLI lists the registry without it
        return importlib.import_module(self.module)

    def fetch(self, *, say: Callable[[str], None] = lambda msg: None, force: bool = False):
        return self._impl().fetch(say=say, force=force)

    def cached(self):
        return self._impl().cached()

    def missing_message(self, what: str) -> str:
        return self._impl().missing_message(what)

    def for_random(self, config, preset: str):
        return self._impl().for_random(config, preset)

    def describe(self, info) -> str:
        return self._impl().describe(info)

    def fits(self, config) -> bool:
        """Whether a model of `config` has this vocabulary (offered as --tokenizer when it has none)."""
        return self._impl().fits(config)

    def vocab_size(self) -> int:
        return self._impl().vocab_size()

    def attach(self):
        """(folder, TokenizerInfo) of the built tokenizer; an error naming the fetch when it is missing."""
        return self._impl().attach()

    def summary(self, folder) -> str:
        return self._impl().summary(folder)


@dataclass(frozen=True)
class OnnxMapping:
    """How an ONNX Runtime GenAI graph of this architecture maps onto its checkpoint tensors
    (compiler/inputs/onnx.py reads the folder and the file; this, what the graph means). `module`
    provides: match(file) -> graph (the walk that names the nodes carrying our parameters),
    config(file, graph, genai_config, folder) -> config, check(file, graph, config) (what the
    graph computes that the config must reproduce), tensor_parts(graph, config) -> {HF name: the
    graph's pieces, stacked by rows}, linears(graph) -> every LinearNode."""

    types: tuple[str, ...]  # genai_config.json's model.type values: ("phi3",)
    module: str  # "edgesmith.compiler.models.phi3.onnx_map"

    def _impl(self):  # imported when an ONNX folder is opened (it needs the onnx package)
        return importlib.import_module(self.module)

    def match(self, file):
        return self._impl().match(file)

    def config(self, file, graph, genai: dict, folder):
        return self._impl().config(file, graph, genai, folder)

    def check(self, file, graph, config) -> None:
        self._impl().check(file, graph, config)

    def tensor_parts(self, graph, config) -> dict[str, list]:
        return self._impl().tensor_parts(graph, config)

    def linears(self, graph) -> list:
        return self._impl().linears(graph)


def stack_rows(parts: list[np.ndarray]) -> np.ndarray:
    """The usual fusion: [(n1, k), (n2, k), ...] -> (n1 + n2 + ..., k)."""
    return np.concatenate(parts, axis=0)


@dataclass(frozen=True)
class ModelArchitecture:
    """One architecture. The config its parser returns is a frozen dataclass whose class names the
    architecture (`architecture` ClassVar), with `to_dict()` / `from_dict()`, and the fields the
    shared code reads: vocab_size, hidden_size, num_hidden_layers, num_attention_heads,
    num_key_value_heads, head_dim, max_position_embeddings, sliding_window, tie_word_embeddings,
    dtype, bos_token_id, eos_token_ids. Everything else about a config only its entry reads: what
    the rest needs is asked of the entry (linear_layers, kv_bytes_per_token, ...)."""

    architecture: str  # config.json's `architectures` value: "Phi3ForCausalLM"
    name: str  # the folder under compiler/models/: "phi3"
    models: str  # what it covers, for messages: "Phi-3/3.5/4-mini"
    parse_config: Callable[[dict, str], Any]  # (config.json dict, where it came from) -> config
    config_class: type  # the config dataclass: its to_dict() is the manifest's, from_dict() reads it back
    expected_shapes: Callable[[Any], dict[str, tuple[int, ...]]]  # config -> checkpoint tensor -> shape
    param_source: Callable[[Any, str], ParamSource]  # (config, our float parameter name) -> its source
    model: str  # "module:Class" of the nn.Module, imported by model_class() (TVM)
    # What the runtime asks (compiler/models/phi3/sizes.py): config -> ...
    linear_layers: Callable[[Any], list[LinearShape]]  # its distinct linears (edgesmith tune)
    kv_bytes_per_token: Callable[[Any, str], int]  # (config, KV dtype) -> K and V of a token, every layer
    activation_bytes_per_token: Callable[[Any], int]  # float32 activations a prefill token holds at most
    weights_read_per_token: Callable[[Any, dict], int]  # (config, {param: bytes}) -> bytes a decode step reads
    shape_id: Callable[[Any], str]  # the shapes a tuned thread count was measured for
    describe: Callable[[Any], str]  # one line: layers, widths, heads, vocabulary, rope (edgesmith inspect)
    # config -> (the longest context a model with a sliding window may take, why: what its RoPE
    # allows past max_position_embeddings); None: max_position_embeddings (compiler/context.py)
    position_limit: Callable[[Any], tuple[int, str]] | None = None
    random_presets: Mapping[str, dict] = field(default_factory=dict)  # random:<preset> -> config.json dict
    tokenizer: TokenizerBuilder | None = None  # the tokenizer its random: presets carry, if any
    onnx: OnnxMapping | None = None  # how its ONNX Runtime GenAI graphs map onto its tensors, if they do

    def config_from_dict(self, data: dict):
        """The config a bundle's manifest holds (written by its to_dict())."""
        return self.config_class.from_dict(data)

    def model_class(self) -> type:
        """The nn.Module: (config, quantization, *, quantize_embedding, target, kv_dtype) -> model
        with prefill, decode, create_paged_kv_cache and get_default_spec (models/phi3/model.py:
        prefill and decode take `seq_pos`, the absolute position of their first token, and take
        their RoPE positions from it, not from the KV cache: compiler/context.py says why);
        `quantize_lm_head` too where a source stores the lm_head otherwise than the embedding."""
        module, _, cls = self.model.partition(":")
        return getattr(importlib.import_module(module), cls)


MODELS: dict[str, ModelArchitecture] = {}


def register(entry: ModelArchitecture) -> ModelArchitecture:
    """Add an architecture; its random presets must not clash with another's."""
    if entry.architecture in MODELS:
        raise ValueError(f"architecture {entry.architecture} is registered already")
    clash = sorted(set(entry.random_presets) & set(RANDOM_PRESETS))
    if clash:
        raise ValueError(f"{entry.architecture}: random presets {clash} belong to another architecture")
    MODELS[entry.architecture] = entry
    return entry


def supported() -> str:
    """'Phi3ForCausalLM (Phi-3/3.5/4-mini)', for messages."""
    return ", ".join(f"{m.architecture} ({m.models})" for m in MODELS.values())


def get_architecture(architecture: str, where: str = "config") -> ModelArchitecture:
    try:
        return MODELS[architecture]
    except KeyError:
        raise ConfigError(f"{where} says architecture {architecture!r}; edgesmith compiles {supported()} only") from None


def for_config(cfg) -> ModelArchitecture:
    """The entry a parsed config belongs to (its class names the architecture)."""
    return get_architecture(type(cfg).architecture, where=f"a {type(cfg).__name__}")


def tokenizer_builder(vocabulary: str) -> TokenizerBuilder | None:
    """The builder of the tokenizer a bundle's manifest names (tokenizer.vocabulary)."""
    return next((m.tokenizer for m in MODELS.values() if m.tokenizer and m.tokenizer.vocabulary == vocabulary), None)


def tokenizer_builders() -> list[TokenizerBuilder]:
    return [m.tokenizer for m in MODELS.values() if m.tokenizer is not None]


def for_onnx_genai_type(kind: str) -> ModelArchitecture | None:
    return next((m for m in MODELS.values() if m.onnx and kind in m.onnx.types), None)


def onnx_genai_types() -> list[str]:
    return [t for m in MODELS.values() if m.onnx for t in m.onnx.types]


class _Presets(Mapping):
    """Every architecture's random presets as one read-only name -> config.json dict mapping,
    live: an architecture registered later shows up in it."""

    def __getitem__(self, name: str) -> dict:
        for m in MODELS.values():
            if name in m.random_presets:
                return m.random_presets[name]
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        for m in MODELS.values():
            yield from m.random_presets

    def __len__(self) -> int:
        return sum(len(m.random_presets) for m in MODELS.values())

    def __repr__(self) -> str:
        return f"RANDOM_PRESETS({', '.join(self)})"


RANDOM_PRESETS: Mapping[str, dict] = _Presets()
