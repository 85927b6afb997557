"""Phi3ForCausalLM: Phi-3-mini 4k/128k, Phi-3-medium, Phi-3.5-mini, Phi-4-mini (all one architecture).

    config.py     Phi3Config and its parser (both config.json layouts, longrope)
    loader.py     the tensors a checkpoint holds (names, shapes) and where our parameters come from
    model.py      the nn model (tvm.relax.frontend.nn) on TVM's paged KV cache; imported only to compile
    presets.py    random:<preset> configs of the public shapes
    sizes.py      what the runtime asks: linear layers, KV and activation bytes per token, weights read
    tokenizer.py  the real Phi-3 tokenizer, built once from a registry package (imported when asked)
    onnx_graph.py an ONNX Runtime GenAI Phi-3 graph matched onto our layers (the walk)
    onnx_map.py   the rest of reading one: its config, the RoPE tables checked, the tensors' pieces
"""
from __future__ import annotations

from ..registry import ModelArchitecture, OnnxMapping, TokenizerBuilder
from . import config, loader, presets, sizes

PHI3 = ModelArchitecture(
    architecture=config.ARCHITECTURE,
    name="phi3",
    models="Phi-3/3.5/4-mini",
    parse_config=config.parse,
    config_class=config.Phi3Config,
    expected_shapes=loader.expected_shapes,
    param_source=loader.param_source,
    model="edgesmith.compiler.models.phi3.model:Phi3ForCausalLM",
    linear_layers=sizes.linear_layers,
    kv_bytes_per_token=sizes.kv_bytes_per_token,
    activation_bytes_per_token=sizes.activation_bytes_per_token,
    weights_read_per_token=sizes.weights_read_per_token,
    shape_id=sizes.shape_id,
    describe=sizes.describe,
    position_limit=sizes.position_limit,
    random_presets=presets.RANDOM_PRESETS,
    tokenizer=TokenizerBuilder("phi-3", "edgesmith.compiler.models.phi3.tokenizer"),
    # Phi-3/3.5-mini, Phi-3-medium and Phi-4-mini are all "phi3" to ONNX Runtime GenAI
    onnx=OnnxMapping(("phi3",), "edgesmith.compiler.models.phi3.onnx_map"),
)
