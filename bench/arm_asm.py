"""AArch64 assembly, read the way a compiler engineer reads it: find a kernel's hot loop, cost it.

    loop = hot_loop(asm_text, function=r"ggml_vec_dot_q4_0_q8_0", marker=r"sdot")
    summary = mca(loop.body, "cortex-a55")

Works on both GNU assemblers' dialects this bench meets: LLVM's (TVM's `inspect_source("asm")`:
`.LBB4_6:`, `b.ne`) and GCC's (`.L52:`, `bgt`). A function is the text between `NAME:` and
`.size NAME`, for every NAME declared `.type NAME, @function` / `%function` (TVM's parallel
bodies, `.L__tvm_parallel_lambda`, included). A loop is a back edge: a branch to a label defined
earlier in the same function; its body is the label's line to the branch's, inclusive. The hot
loop is the innermost such body (no other back edge nested in it) that holds the marker
instruction, the one with the most markers if several do; `Loop` says which label it took.

llvm-mca then runs that body as a steady-state loop (it ignores the branch and assumes every
load hits L1): cycles per iteration, instructions, micro-ops, IPC, and the busiest execution
resource (if its pressure is close to the cycles, the loop is throughput-bound on that unit;
if the cycles are well above it, a dependency chain sets the pace).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field

_FUNC_TYPE = re.compile(r"^\s*\.type\s+([^\s,]+)\s*,\s*[@%]function")
_LABEL = re.compile(r"^([.\w$]+):")
# Branches that name a label: b, b.cond, GCC's bcond, cbz/cbnz reg, tbz/tbnz reg, #bit.
_BRANCH = re.compile(
    r"^(?:b|b\.\w+|b(?:eq|ne|cs|hs|cc|lo|mi|pl|vs|vc|hi|ls|ge|lt|gt|le|al)|cbn?z\s+\w+,|tbn?z\s+\w+,\s*#?\w+,)"
    r"\s*([.\w$]+)\s*$")


@dataclass
class Loop:
    function: str
    label: str
    body: list[str]  # the label line, then one instruction per line (comments and directives dropped)
    markers: int  # marker instructions in the body
    straight_line: bool  # no branch inside but the back edge (llvm-mca runs branches as fall-through)

    @property
    def instructions(self) -> int:
        return len(self.body) - 1

    def count(self, pattern: str) -> int:
        rx = re.compile(pattern)
        return sum(1 for line in self.body[1:] if rx.fullmatch(line.split()[0]))

    def text(self) -> str:
        return "\n".join(self.body) + "\n"


def _clean(line: str) -> str:
    return line.split("//")[0].rstrip()


def functions(asm: str) -> dict[str, list[str]]:
    """{function name: its lines (labels and instructions; directives and comments dropped)}."""
    lines = asm.splitlines()
    names = {m.group(1) for m in map(_FUNC_TYPE.match, lines) if m}
    out: dict[str, list[str]] = {}
    current: str | None = None
    for raw in lines:
        line = _clean(raw)
        label = _LABEL.match(line)
        if label and label.group(1) in names:
            current = label.group(1)
            out[current] = []
            continue
        if current is None or not line.strip():
            continue
        stripped = line.strip()
        if re.match(rf"\.size\s+{re.escape(current)}\s*,", stripped):
            current = None
            continue
        if label:
            out[current].append(label.group(1) + ":")
        elif not stripped.startswith("."):
            out[current].append("\t" + stripped)
    return out


def loops(body: list[str]) -> list[tuple[int, int]]:
    """(label index, branch index) of every back edge in one function's lines."""
    where = {}
    edges = []
    for i, line in enumerate(body):
        if line.endswith(":"):
            where[line[:-1]] = i
            continue
        m = _BRANCH.match(line.strip())
        if m and m.group(1) in where:
            edges.append((where[m.group(1)], i))
    return edges


def hot_loop(asm: str, function: str, marker: str) -> Loop:
    """The innermost loop of the function matching `function` (a regex, full match) that holds
    the most instructions matching `marker` (a regex on the mnemonic)."""
    funcs = functions(asm)
    matches = [name for name in funcs if re.fullmatch(function, name)]
    if len(matches) != 1:
        raise ValueError(f"expected one function matching {function!r} in the assembly, found {matches or 'none'} "
                         f"(functions: {', '.join(sorted(funcs)[:12])})")
    name = matches[0]
    body = funcs[name]
    edges = loops(body)
    innermost = [(a, b) for a, b in edges
                 if not any((a2, b2) != (a, b) and a <= a2 and b2 <= b for a2, b2 in edges)]
    rx = re.compile(marker)
    best: Loop | None = None
    for a, b in innermost:
        lines = [body[a]] + [line for line in body[a + 1:b + 1] if not line.endswith(":")]
        n = sum(1 for line in lines[1:] if rx.fullmatch(line.split()[0]))
        branches = sum(1 for line in lines[1:] if _BRANCH.match(line.strip()))
        if n and (best is None or n > best.markers):
            best = Loop(name, body[a][:-1], lines, n, branches == 1)
    if best is None:
        raise ValueError(f"no innermost loop of {name} holds an instruction matching {marker!r} "
                         f"({len(edges)} back edges, {len(innermost)} innermost)")
    return best


# ---------------------------------------------------------------- llvm-mca


def find_llvm_mca() -> str | None:
    """The newest llvm-mca on PATH (llvm-mca-NN first: Debian's unversioned one is the oldest)."""
    for v in range(30, 13, -1):
        if shutil.which(f"llvm-mca-{v}"):
            return f"llvm-mca-{v}"
    return shutil.which("llvm-mca")


def mca_version(tool: str) -> str:
    out = subprocess.run([tool, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"LLVM version ([\d.]+)", out)
    return m.group(1) if m else "?"


def scheduling_model(tool: str, mcpu: str) -> str:
    """The name prefix of the model's execution resources (e.g. CortexA55Unit, N1Unit, A57Unit):
    which scheduling model this LLVM really uses for `mcpu`."""
    res = mca(["x:", "\tadd x0, x0, #1", "\tfadd v0.4s, v0.4s, v1.4s"], mcpu, tool, iterations=1)
    names = list(res["resources"].values())
    return re.sub(r"Unit.*", "Unit", names[0]) if names else "?"


@dataclass
class McaResult:
    mcpu: str
    iterations: int
    instructions: int
    cycles: int
    uops: int
    dispatch_width: int
    ipc: float
    block_rthroughput: float
    resources: dict = field(default_factory=dict)  # "[1.0]" -> resource name
    pressure: dict = field(default_factory=dict)  # resource name -> cycles per iteration

    @property
    def cycles_per_iteration(self) -> float:
        return self.cycles / self.iterations

    def busiest(self) -> tuple[str, float]:
        if not self.pressure:
            return "?", 0.0
        name = max(self.pressure, key=self.pressure.get)
        return name, self.pressure[name]


def mca(body: list[str] | str, mcpu: str, tool: str | None = None, iterations: int = 300) -> dict:
    """llvm-mca's summary of `body` run `iterations` times on `mcpu` (aarch64), as a dict."""
    tool = tool or find_llvm_mca()
    if tool is None:
        raise RuntimeError("llvm-mca is not installed: apt-get install llvm-19 (or any llvm-NN with its tools)")
    text = body if isinstance(body, str) else "\n".join(body) + "\n"
    p = subprocess.run([tool, "-mtriple=aarch64-linux-gnu", f"-mcpu={mcpu}", f"-iterations={iterations}"],
                       input=text, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{tool} -mcpu={mcpu} failed: {p.stderr.strip()[-600:]}")
    return _parse(p.stdout, mcpu)


def _parse(out: str, mcpu: str) -> dict:
    def num(key: str) -> float:
        m = re.search(rf"^{key}:\s+([\d.]+)", out, re.M)
        if not m:
            raise RuntimeError(f"llvm-mca output has no {key!r} line")
        return float(m.group(1))

    resources = dict(re.findall(r"^(\[[\d.]+\])\s+-\s+(\S+)", out, re.M))
    pressure = {}
    m = re.search(r"Resource pressure per iteration:\n(.*)\n(.*)\n", out)
    if m:
        for key, value in zip(m.group(1).split(), m.group(2).split()):
            if key in resources and value != "-":
                pressure[resources[key]] = float(value)
    res = McaResult(mcpu, int(num("Iterations")), int(num("Instructions")), int(num("Total Cycles")),
                    int(num("Total uOps")), int(num("Dispatch Width")), num("IPC"), num("Block RThroughput"),
                    resources, pressure)
    busiest, busy = res.busiest()
    return {"mcpu": mcpu, "iterations": res.iterations, "instructions": res.instructions, "cycles": res.cycles,
            "uops": res.uops, "dispatch_width": res.dispatch_width, "ipc": res.ipc,
            "block_rthroughput": res.block_rthroughput, "cycles_per_iteration": res.cycles_per_iteration,
            "busiest_resource": busiest, "busiest_pressure": busy, "resources": resources, "pressure": pressure}
