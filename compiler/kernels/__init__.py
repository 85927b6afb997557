"""The kernels a traced model calls, per target's kernel family.

| module         | what it holds                                                              |
| -------------- | -------------------------------------------------------------------------- |
| family         | a target's kernel family (cpu, cpu-int8dot, gpu): decided once, here       |
| linear         | Linear: parameters and forward from the quantization entry, for the family |
| cpu            | CPU tensor expressions: linears, embedding rows, RoPE; block names the schedules use |
| gemv           | decode's int4 GEMV with float activations, in TIR                          |
| int8           | decode GEMV and prefill GEMM on int8 dot products (VNNI, Arm dotprod), in TIR |
| attention_cpu  | CPU attention kernels for TVM's paged KV cache (sliding window, float16 KV) |
| gpu            | GPU linears in the textbook form dlight's rules read                       |
| attention_opencl | two of TVM's GPU attention kernels made right on OpenCL                  |
| rope_split     | GPU decode: TVM's KV split kernel swapped for one that also applies RoPE   |
| kv_append      | GPU decode: that split and the KV append in one kernel (+ the runner's builtin) |
"""
