"""How a linear layer's weight is stored and computed: the quantization registry.

| module        | what it holds                                                                  |
| ------------- | ------------------------------------------------------------------------------ |
| registry      | QUANTIZATIONS (one entry per --quant name), register, get_quantization        |
| scheme        | Quantization: the interface (params, encode, linear, lookup) every entry implements |
| float_weights | FloatWeights: q0f32, q0f16                                                     |
| q4            | GroupQ4: q4f16, q4f32 (+i8); the int4 format (quantize_q4, dequantize_q4)      |

A new scheme is its file (a Quantization subclass with its kernels) and one `register(...)` entry
in registry.py.
"""
