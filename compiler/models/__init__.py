"""Model architectures, one folder each, and the registry the compiler looks them up in.

    registry.py   ModelArchitecture (one entry per config.json `architectures` value), MODELS,
                  register(), lookups by architecture / config / ONNX GenAI type, RANDOM_PRESETS
    phi3/         Phi3ForCausalLM (Phi-3/3.5-mini, Phi-3-medium, Phi-4-mini): config.py (Phi3Config),
                  loader.py (checkpoint tensors, name map), model.py (the nn model), presets.py,
                  sizes.py (what the runtime asks), tokenizer.py (the Phi-3 tokenizer builder)

A new architecture is a folder like phi3/ and one `register(...)` line below.
"""
from __future__ import annotations

from .registry import (  # noqa: F401
    DEFAULT_ARCHITECTURE,
    MODELS,
    RANDOM_PRESETS,
    LinearShape,
    ModelArchitecture,
    OnnxMapping,
    ParamSource,
    TokenizerBuilder,
    for_config,
    for_onnx_genai_type,
    get_architecture,
    onnx_genai_types,
    register,
    stack_rows,
    supported,
    tokenizer_builder,
    tokenizer_builders,
)
from .phi3 import PHI3

register(PHI3)
