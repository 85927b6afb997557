"""From the traced model to a library: passes, schedules, what goes beside the library.

| module          | what it holds                                                           |
| --------------- | ----------------------------------------------------------------------- |
| pipeline        | the lowering passes in phases, an IR dump after each (--dump-ir)        |
| schedules_cpu   | CPU schedule rules (linear GEMV/GEMM, row reductions, elementwise)      |
| attention_swap  | the pass that swaps TVM's CPU attention kernels for ours                |
| kernel_sources  | the GPU kernels' source code, written into the bundle                   |
| tune_library    | `tune`'s candidate libraries: one shape, one function per candidate     |
| schedules_gpu   | dlight's GPU rules plus a catch-all thread binding                      |
"""
