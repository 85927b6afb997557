"""What a compile reads: a checkpoint, whatever its form, as one `Checkpoint`.

| module         | what it holds                                                               |
| -------------- | --------------------------------------------------------------------------- |
| checkpoint     | Checkpoint (what every source provides), validate, open_checkpoint, default_quant |
| config         | config.json -> its architecture's config, picked by `architectures`         |
| safetensors    | a Hugging Face folder: safetensors files (sharded or not), bounds-checked   |
| random_weights | random:<preset>: the registry's presets filled with seeded random weights   |

An ONNX Runtime GenAI folder is compiler/onnx_checkpoint.py (its mapping onto Phi-3's layers is the
architecture's: compiler/onnx_graph.py).
"""
