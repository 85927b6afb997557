"""`edgesmith tune`: the kernels' choices measured on the device itself (the CPU kernels'; on a GPU
device the decode GEMVs').

| module      | what it holds                                                                   |
| ----------- | ------------------------------------------------------------------------------- |
| fingerprint | the device's fingerprint from the probe (CPU model, cores, ISA flags, GPU APIs) |
| shapes      | the distinct tunable kernels of a model on a target (shape keys)                |
| tuner       | the tuning loop: candidates built, pushed, timed; budget, resume, the record    |
| apply       | `compile --tuning FILE                                                          |

The kernel parameters and the record's format are compiler/tuning.py's; the candidate libraries
compiler/lowering/tune_library.py's; the timing is the runner's `kernelbench` (runtime/runner/runner.cc).
"""
