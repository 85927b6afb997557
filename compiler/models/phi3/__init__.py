"""Phi3ForCausalLM: Phi-3-mini 4k/128k, Phi-3-medium, Phi-3.5-mini, Phi-4-mini (all one architecture).

    config.py   Phi3Config and its parser (both config.json layouts, longrope)
    loader.py   the tensors a checkpoint holds (names, shapes) and where our parameters come from
    model.py    the nn model (tvm.relax.frontend.nn) on TVM's paged KV cache; imported only to compile
    presets.py  random:<preset> configs of the public shapes
"""
from __future__ import annotations

from ..registry import ModelArchitecture
from . import config, loader, presets

PHI3 = ModelArchitecture(
    architecture=config.ARCHITECTURE,
    name="phi3",
    models="Phi-3/3.5/4-mini",
    parse_config=config.parse,
    config_class=config.Phi3Config,
    expected_shapes=loader.expected_shapes,
    param_source=loader.param_source,
    model="edgesmith.compiler.models.phi3.model:Phi3ForCausalLM",
    random_presets=presets.RANDOM_PRESETS,
    # Phi-3/3.5-mini, Phi-3-medium and Phi-4-mini are all "phi3" to ONNX Runtime GenAI
    onnx_genai_types=("phi3",),
)
