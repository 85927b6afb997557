"""`edgesmith farm`: every device in parallel, one report, a regression gate.

| module       | what it holds                                                                   |
| ------------ | ------------------------------------------------------------------------------- |
| select       | which devices a run uses (names or tags), from devices.yaml or the tracker      |
| bundles      | one compile per target the devices need, cached by the content of its inputs    |
| tracker      | TVM's RPC tracker as the lease broker: the wire protocol, leases, `farm status` |
| agent        | `farm agent`: publishes a machine's devices on the tracker and hands out leases |
| orchestrator | the run: lease, push, profile (retried per the policy), gate against a baseline |
| report       | results.json, summary.md, junit.xml and report.html (inline SVG plots)          |

Exit codes of `farm run` (EXIT_*): 0 pass, 1 usage or configuration error, 3 regression against
the baseline, 4 more devices failed than the policy allows (4 wins over 3).
"""
