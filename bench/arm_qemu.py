"""Dynamic instruction counts of an aarch64 program under qemu-user, per library and per symbol.

    plugin = build_plugin(cache)
    counts = run_counted(["bundle/bin/runner", "generate", ...], plugin, cpu="cortex-a76")
    per_symbol = symbolize(counts)           # {(file name, symbol): instructions}

bench/qemu_insn_count.c (a TCG plugin) adds, per translated block, the block's instruction count
each time it runs, and names the mapped file it lies in; here the file offsets become symbols
(the ELF's load segments map offset -> address; `nm` gives the nearest symbol at or below it;
code of local labels, e.g. TVM's `.L__tvm_parallel_lambda`, counts under the function before it,
which for TVM is the kernel's own `<name>_compute_`).

Needs the dynamic qemu-user (Debian's `qemu-user` 7.2; the static build cannot load plugins) and
a host C compiler for the plugin. qemu counts guest instructions retired, not cycles.
"""
from __future__ import annotations

import bisect
import os
import re
import shutil
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
SYSROOT = "/usr/aarch64-linux-gnu"
NM, READELF = "aarch64-linux-gnu-nm", "aarch64-linux-gnu-readelf"


class QemuError(RuntimeError):
    """Counting could not run here; the message says what is missing or what failed."""


def qemu_with_plugins() -> str:
    qemu = shutil.which("qemu-aarch64")
    if qemu is None:
        raise QemuError("qemu-aarch64 (dynamic qemu-user, which loads TCG plugins) is not installed: "
                        "apt-get install qemu-user")
    usage = subprocess.run([qemu, "-h"], capture_output=True, text=True).stdout
    if "-plugin" not in usage:
        raise QemuError(f"{qemu} was built without TCG plugin support (no -plugin option)")
    return qemu


def build_plugin(cache: Path) -> Path:
    src = HERE / "qemu_insn_count.c"
    lib = cache / "libinsncount.so"
    if lib.exists() and lib.stat().st_mtime >= src.stat().st_mtime:
        return lib
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise QemuError("no host C compiler (cc/gcc) to build the qemu plugin: apt-get install gcc")
    cache.mkdir(parents=True, exist_ok=True)
    p = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-o", str(lib), str(src), "-lpthread"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise QemuError(f"building the qemu plugin failed: {p.stderr.strip()[-500:]}")
    return lib


def run_counted(argv: list[str], plugin: Path, cpu: str, env: dict | None = None,
                timeout: float = 1800) -> tuple[str, dict[tuple[str, int], int]]:
    """(stdout, {(mapped file, offset of a block): instructions it executed}) of argv under qemu."""
    qemu = qemu_with_plugins()
    with tempfile.TemporaryDirectory(prefix="insncount-") as tmp:
        out = Path(tmp) / "counts.tsv"
        cmd = [qemu, "-cpu", cpu, "-L", SYSROOT, "-plugin", f"{plugin},out={out}", *argv]
        p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)
        if p.returncode != 0:
            tail = " | ".join(p.stderr.strip().splitlines()[-4:])
            raise QemuError(f"{Path(argv[0]).name} under qemu -cpu {cpu} failed (exit {p.returncode}): {tail[-500:]}")
        if not out.exists():
            raise QemuError("the qemu plugin wrote no counts (was it loaded?)")
        counts: dict[tuple[str, int], int] = defaultdict(int)
        for line in out.read_text().splitlines():
            path, offset, insns, execs = line.split("\t")
            counts[(path, int(offset))] += int(insns) * int(execs)
    return p.stdout, dict(counts)


class _Symbols:
    """File offset -> symbol of one aarch64 ELF file."""

    def __init__(self, path: str):
        self.segments = []  # (file offset, size, virtual address) of PT_LOAD segments
        self.addrs, self.names = [], []
        if not os.path.isfile(path):
            return
        out = subprocess.run([READELF, "-lW", path], capture_output=True, text=True).stdout
        for m in re.finditer(r"^\s*LOAD\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x[0-9a-f]+\s+0x([0-9a-f]+)", out, re.M):
            self.segments.append((int(m.group(1), 16), int(m.group(3), 16), int(m.group(2), 16)))
        syms = {}
        for flags in ([], ["-D"]):  # the full table, and the dynamic one (all a stripped library keeps)
            out = subprocess.run([NM, *flags, "--defined-only", path], capture_output=True, text=True).stdout
            for line in out.splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[1] in "tTwWiI":
                    syms.setdefault(int(parts[0], 16), parts[2])
        self.addrs = sorted(syms)
        self.names = [syms[a] for a in self.addrs]

    def at(self, offset: int) -> str:
        addr = next((offset - off + vaddr for off, size, vaddr in self.segments if off <= offset < off + size), None)
        if addr is None or not self.addrs:
            return "?"
        i = bisect.bisect_right(self.addrs, addr) - 1
        return self.names[i] if i >= 0 else "?"


def symbolize(counts: dict[tuple[str, int], int]) -> dict[tuple[str, str], int]:
    """{(file name, symbol): instructions}."""
    tables: dict[str, _Symbols] = {}
    out: dict[tuple[str, str], int] = defaultdict(int)
    for (path, offset), n in counts.items():
        if path not in tables:
            tables[path] = _Symbols(path)
        out[(Path(path).name, tables[path].at(offset))] += n
    return dict(out)


def per_token(short: dict, long: dict, steps: int) -> dict:
    """(long - short) / steps for every key: the cost of one more decode step."""
    return {k: (long.get(k, 0) - short.get(k, 0)) / steps for k in set(short) | set(long)}
