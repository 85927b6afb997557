"""CPU schedules: our rules for the model's linear layers and a parallel fallback, then
dlight's Reduction rule for the norms.

dlight's CPU GEMV rule is not used: its auto-unroll makes compiles minutes long (TVM-NOTES),
and it leaves prefill matmuls serial. A rule returns None when it does not apply.
"""
from __future__ import annotations

from edgesmith.targets.tvm_api import Schedule, dlight, tirx

_SPATIAL, _REDUCE = 0, 2


def _is_scheduled(func) -> bool:
    return bool(func.attrs and func.attrs.get("tir.is_scheduled", False))


def _static(extent) -> int | None:
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def _leading_spatial(sch: Schedule, block) -> list:
    """The loops above `block` that feed none of its reduction iterators, outermost first."""
    reductions = [value for iv, value in _bindings(sch, block) if iv.iter_type == _REDUCE]
    out = []
    for loop in sch.get_loops(block):
        var = sch.get(loop).loop_var
        if any(_uses(value, var) for value in reductions):
            break
        out.append(loop)
    return out


def _bindings(sch: Schedule, block):
    realize = _block_realize(sch, block)
    return list(zip(realize.block.iter_vars, realize.iter_values))  # noqa: B905


def _block_realize(sch: Schedule, block):
    from tvm.s_tir import SBlockRealize

    parent = sch.get(sch.get_loops(block)[-1]).body if sch.get_loops(block) else None
    if isinstance(parent, SBlockRealize):
        return parent
    # Fall back: search the loop body (a SeqStmt under the innermost loop).
    target = sch.get(block)
    found = []

    def visit(node):
        if isinstance(node, SBlockRealize) and node.block.same_as(target):
            found.append(node)

    tirx.stmt_functor.post_order_visit(sch.get(sch.get_loops(block)[-1]).body, visit)
    return found[0]


def _uses(expr, var) -> bool:
    hit = []
    tirx.stmt_functor.post_order_visit(expr, lambda n: hit.append(n) if isinstance(n, tirx.Var) and n.same_as(var) else None)
    return bool(hit)


class Parallel(dlight.ScheduleRule):
    """Fallback: each top-level loop nest runs its leading spatial loops fused and in parallel."""

    def apply(self, func, target, _tunable):
        if not isinstance(func, tirx.PrimFunc) or _is_scheduled(func):
            return None
        sch = Schedule(func)
        root = sch.get_sblock("root") if _has_root(sch) else None
        if root is None:
            return None
        touched = False
        for block in sch.get_child_blocks(root):
            try:
                loops = _leading_spatial(sch, block)
            except Exception:  # noqa: BLE001 - an unusual nest keeps its serial loops
                continue
            if not loops:
                continue
            fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
            sch.parallel(fused)
            touched = True
        return sch if touched else None


def _has_root(sch: Schedule) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:  # noqa: BLE001
        return False


def apply(target):
    return dlight.ApplyDefaultSchedule(dlight.cpu.Reduction(), Parallel())
