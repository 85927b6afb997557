"""bench/arm_asm.py finds a kernel's hot loop the way bench/arm_cost.py relies on it: in both
assembler dialects it reads (LLVM's from TVM, GCC's from llama.cpp), past nested loops, scalar
tail loops and look-alike functions. The expected loops are written out by hand here."""
from __future__ import annotations

import shutil

import pytest

from bench import arm_asm

# GCC's dialect: `bgt` without a dot, `.L` labels, immediates without '#'; a vector loop with the
# marker, then a scalar tail loop, and a look-alike function whose name extends the wanted one.
GCC = """\
\t.text
\t.global\tdot
\t.type\tdot, %function
dot:
.LFB1:
\t.cfi_startproc
\tmovi\tv1.4s, 0
.L3:
\tldr\tq0, [x1], 16
\tsdot\tv1.4s, v0.16b, v2.16b
\tsdot\tv1.4s, v0.16b, v3.16b
\tcmp\tx1, x2
\tbne\t.L3
.L4:
\tldrsb\tw3, [x1], 1   // scalar tail
\tmadd\tw0, w3, w3, w0
\tcmp\tx1, x4
\tbgt\t.L4
\tret
\t.cfi_endproc
\t.size\tdot, .-dot
\t.type\tdot_tail, %function
dot_tail:
.L9:
\tsdot\tv1.4s, v0.16b, v2.16b
\tsdot\tv1.4s, v0.16b, v2.16b
\tsdot\tv1.4s, v0.16b, v2.16b
\tb\t.L9
\t.size\tdot_tail, .-dot_tail
"""

# LLVM's dialect as TVM prints it: a parallel body (a local symbol) holding a row loop around the
# block loop; the block loop is the innermost one with the prefetch.
LLVM = """\
\t.type\t.L__tvm_parallel_lambda,@function
.L__tvm_parallel_lambda:
\t.cfi_startproc
\tmov\tx8, xzr
.LBB4_2:                                // =>This Loop Header: Depth=1
\tmov\tx14, xzr
.LBB4_3:                                //   Parent Loop BB4_2 Depth=1
\tprfm\tpldl1keep, [x15, x14]
\tldr\tq1, [x10, x14]
\tsdot\tv3.4s, v1.16b, v4.16b
\tadd\tx14, x14, #16
\tcmp\tx14, #1536
\tb.ne\t.LBB4_3
// %bb.4:
\tstr\ts0, [x27, x13, lsl #2]
\tadd\tx8, x8, #1
\tcmp\tx8, #16
\tb.ne\t.LBB4_2
\tret
.Lfunc_end4:
\t.size\t.L__tvm_parallel_lambda, .Lfunc_end4-.L__tvm_parallel_lambda
"""


def test_gcc_dialect_picks_the_vector_loop_not_the_tail_nor_the_look_alike():
    loop = arm_asm.hot_loop(GCC, "dot", "sdot")
    assert loop.function == "dot" and loop.label == ".L3"
    assert loop.body == [".L3:", "\tldr\tq0, [x1], 16", "\tsdot\tv1.4s, v0.16b, v2.16b",
                         "\tsdot\tv1.4s, v0.16b, v3.16b", "\tcmp\tx1, x2", "\tbne\t.L3"]
    assert loop.markers == 2 and loop.instructions == 5 and loop.straight_line


def test_llvm_dialect_picks_the_inner_loop_of_a_nest_in_a_local_function():
    loop = arm_asm.hot_loop(LLVM, r"\.L__tvm_parallel_lambda\d*", "prfm")
    assert loop.label == ".LBB4_3" and loop.instructions == 6 and loop.markers == 1
    assert loop.count("sdot") == 1
    # the outer (row) loop holds the inner one: it is never the answer
    assert arm_asm.loops(arm_asm.functions(LLVM)[".L__tvm_parallel_lambda"]) == [(3, 9), (1, 13)]


def test_a_marker_outside_every_loop_or_an_unknown_function_is_one_clear_error():
    with pytest.raises(ValueError, match="no innermost loop of dot holds .*fmla"):
        arm_asm.hot_loop(GCC, "dot", "fmla")
    with pytest.raises(ValueError, match="expected one function matching 'do'"):
        arm_asm.hot_loop(GCC, "do", "sdot")


@pytest.mark.skipif(arm_asm.find_llvm_mca() is None, reason="llvm-mca is not installed (apt-get install llvm-19)")
def test_mca_summary_counts_the_loop_it_was_given():
    loop = arm_asm.hot_loop(GCC, "dot", "sdot")
    res = arm_asm.mca(loop.body, "cortex-a55", iterations=50)
    assert res["iterations"] == 50 and res["instructions"] == 50 * loop.instructions
    # two dependent sdots per iteration on an in-order core: at least two sdot latencies a loop
    assert res["cycles_per_iteration"] >= 2 * 2
    assert res["busiest_resource"].startswith("CortexA55Unit") and res["busiest_pressure"] > 0
    assert shutil.which(arm_asm.find_llvm_mca())
