"""`edgesmith profile` and `edgesmith compare`: tokens/sec you can trust, memory, kernels,
roofline and on-device accuracy, llama-bench style.

| module          | what it holds                                                                  |
| --------------- | ------------------------------------------------------------------------------ |
| records         | the record schema: one record per (prompt, gen, threads) combination           |
| stats           | mean ± sd, spread, Welch's test; stability and throttling from the sensors     |
| fit             | weight / KV-cache / runtime bytes, and the refusal before a run that won't fit |
| roofline        | bytes read per decoded token vs the measured read bandwidth                    |
| kernels         | the runner's per-kernel lines -> a top-N table                                 |
| check           | on-device logits vs a host reference compiled independently (Python VM)        |
| profile_session | one device: push once, run the runner's profiling commands, read sensors       |
| profiler        | the whole profile: every combination, in order, into records                   |
| formats         | md / json / jsonl / csv writers and readers (all read back the same records)   |
| compare         | two sets of records matched on their key properties: % change vs noise         |
"""
