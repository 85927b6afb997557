"""The runner's `kernels` lines (one per kernel and phase: calls, total seconds) -> a top-N table.

The Relax VM in TVM 0.27's device runtime has no profiler (`vm_profiler_load_executable` is not
in libtvm_runtime.so), so the runner times every call itself: it swaps the executable's import
(the model library) for a module that wraps each kernel it hands out with a clock. Builtins the
VM runs itself (KV-cache bookkeeping, allocation) are outside the kernels: they show as "other".
How the kernels were timed (`timing`): "host clock" (CPU kernels), "per-dispatch waits" (a GPU
kernel's call bracketed by waits for the device: it includes the launch), "timestamp queries"
(WebGPU on an adapter with them: the device's own time of each dispatch).
"""
from __future__ import annotations


def kernel_table(lines: list[dict], top: int) -> dict:
    """{prefill_s, decode_s, other: {phase: s}, top: [{kernel, phase, calls, total_s, per_call_us, share}]}."""
    summary = next((l for l in lines if l.get("summary")), {})
    wall = {"prefill": summary.get("prefill_s", 0.0), "decode": summary.get("decode_s", 0.0)}
    rows = [l for l in lines if "kernel" in l]
    rows.sort(key=lambda r: -r["total_s"])
    table = [{"kernel": r["kernel"], "phase": r["phase"], "calls": r["calls"], "total_s": r["total_s"],
              "per_call_us": round(1e6 * r["total_s"] / r["calls"], 2) if r["calls"] else 0.0,
              "share": round(r["total_s"] / wall[r["phase"]], 4) if wall.get(r["phase"]) else None}
             for r in rows[:top]]
    in_kernels = {ph: sum(r["total_s"] for r in rows if r["phase"] == ph) for ph in wall}
    return {"prefill_s": wall["prefill"], "decode_s": wall["decode"],
            "other_s": {ph: round(max(wall[ph] - in_kernels[ph], 0.0), 6) for ph in wall},
            "kernels": len(rows), "top": table,  # rows: one per (kernel, phase), as the top
            "timing": summary.get("timing", "host clock")}
