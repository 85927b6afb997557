"""Benchmarks against peers and on-paper costs: scripts run as `python bench/NAME.py` (or
`python -m bench.NAME`) from the repository root. A package, so its modules are imported as
`bench.common`, `bench.arm_asm`, ... and bench/ itself is never put on sys.path, where generic names
(common, kernel_speed) would shadow installed libraries' modules."""
