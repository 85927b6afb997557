"""What a compile reads: a checkpoint, whatever its form, as one `Checkpoint`.

| module         | what it holds                                                               |
| -------------- | --------------------------------------------------------------------------- |
| checkpoint     | Checkpoint (what every source provides), validate, open_checkpoint, default_quant |
| config         | config.json -> its architecture's config, picked by `architectures`         |
| safetensors    | a Hugging Face folder: safetensors files (sharded or not), bounds-checked   |
| random_weights | random:<preset>: the registry's presets filled with seeded random weights   |
| onnx           | an ONNX Runtime GenAI folder (int4 kept bit for bit), mapped by its architecture |
| onnx_file      | an ONNX model read without its weights; its linear and embedding nodes      |

What an ONNX graph means is its architecture's: compiler/models/phi3/onnx_graph.py, onnx_map.py.
"""
