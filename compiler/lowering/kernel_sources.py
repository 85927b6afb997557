"""The GPU kernels' source code (OpenCL C, Metal Shading Language, CUDA C, WGSL) as TVM generated it,
written into the bundle so it can be read, diffed and checked (`edgesmith inspect --kernels`).

BUNDLE/kernels/module.<ext>     the device module exactly as built (what the library carries)
BUNDLE/kernels/<name>.<ext>     one kernel each: its definition, from the signature to its
                                closing brace (helpers and pragmas stay in module.<ext>)

WGSL (the Vulkan presets' WebGPU kernels): each kernel is a whole shader of its own (its bindings,
the struct of its scalar arguments, the entry point), so <name>.wgsl is that complete shader.
"""
from __future__ import annotations

import re
from pathlib import Path

EXTENSIONS = {"opencl": "cl", "metal": "metal", "cuda": "cu", "webgpu": "wgsl"}
# TVM's WebGPU codegen opens each kernel's shader with this banner.
_WGSL_BANNER = re.compile(r"^//-+\n// Function: (\w+)\n//-+\n", re.M)
# A kernel definition starts on a line of its own: OpenCL `__kernel void f(`, Metal
# `kernel void f(`, CUDA `extern "C" __global__ void __launch_bounds__(n) f(`.
_DEFINITION = re.compile(
    r'^(?:__kernel|kernel|extern "C" __global__)\s+void\s+(?:__launch_bounds__\(\d+\)\s+)?(\w+)\s*\(', re.M)


def device_modules(executable) -> list:
    """The device modules (kinds in EXTENSIONS) under a built Relax executable."""
    found, stack = [], [executable.mod]
    while stack:
        mod = stack.pop()
        if mod.kind in EXTENSIONS:
            found.append(mod)
        stack.extend(mod.imports)
    return found


def split_wgsl(source: str) -> dict[str, str]:
    """{kernel name: its complete WGSL shader} from TVM's WebGPU module source."""
    marks = list(_WGSL_BANNER.finditer(source))
    ends = [m.start() for m in marks[1:]] + [len(source)]
    out = {}
    for m, end in zip(marks, ends):
        lines = source[m.start():end].rstrip().splitlines()
        while lines and lines[-1].startswith("// Function: "):  # the source listing's own line before the next banner
            lines.pop()
        out[m.group(1)] = "\n".join(lines).rstrip() + "\n"
    return out


def split_kernels(source: str) -> dict[str, str]:
    """{kernel name: its definition} for every kernel *defined* (not just declared) in `source`."""
    if _WGSL_BANNER.search(source):
        return split_wgsl(source)
    kernels = {}
    for match in _DEFINITION.finditer(source):
        open_paren = match.end() - 1
        body = _after_parens(source, open_paren)
        if body is None or source[body] != "{":
            continue  # a declaration (ends in ';')
        end = _matching_brace(source, body)
        kernels[match.group(1)] = source[match.start():end + 1] + "\n"
    return kernels


def _after_parens(text: str, i: int) -> int | None:
    depth = 0
    for j in range(i, len(text)):
        depth += {"(": 1, ")": -1}.get(text[j], 0)
        if depth == 0:
            k = j + 1
            while k < len(text) and text[k].isspace():
                k += 1
            return k if k < len(text) else None
    return None


def _matching_brace(text: str, i: int) -> int:
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return j
    return len(text) - 1


def write_kernel_sources(executable, out_dir: Path):
    """Write BUNDLE/kernels/; returns the manifest's KernelSources (None: no source module)."""
    modules = device_modules(executable)
    if not modules:
        return None
    mod = modules[0]
    ext = EXTENSIONS[mod.kind]
    source = mod.inspect_source()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"module.{ext}").write_text(source)
    kernels = split_kernels(source)
    for name, text in kernels.items():
        (out_dir / f"{name}.{ext}").write_text(text)
    from edgesmith.compiler.bundle.manifest import KernelSources

    return KernelSources(language=mod.kind, module=f"{out_dir.name}/module.{ext}", names=tuple(sorted(kernels)),
                         extension=ext)
