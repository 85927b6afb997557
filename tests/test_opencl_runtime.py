"""Our OpenCL device runtime (runtime/runner/opencl/, libedgesmith_opencl.so) loaded into this
process beside TVM, on PoCL (OpenCL on the CPU, installed by scripts/install.sh).

References are independent of the plug-in: numpy for every result; pyopencl (the Khronos API
through another binding) for the device's attributes; /usr/include/CL for the API's numbers;
module bytes written here from the format TVM 0.27 serializes (read off apache/tvm's
OpenCLModuleNode::SaveToBytes and FunctionInfo's serializer, and checked against the bytes a
compiled library carries in test_compiled_library_bytes_parse_as_written_here).

Whole bundles through the runner: tests/test_opencl_bundles.py.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import te

from edgesmith.targets.presets import get_preset
from edgesmith.targets.runner_build import OPENCL_SOURCE_DIR, build_opencl_plugin

import pyopencl as cl  # noqa: E402  (the test extra installs it)
from pocl import DEVICE as POCL, needs_pocl  # noqa: E402

PRESET = get_preset("linux-opencl")


pytestmark = needs_pocl


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The plug-in, loaded once into this process (RTLD_GLOBAL: it registers TVM globals)."""
    os.environ.setdefault("EDGESMITH_OPENCL_CACHE", str(tmp_path_factory.mktemp("opencl-cache")))
    path = build_opencl_plugin(PRESET)
    ctypes.CDLL(str(path), ctypes.RTLD_GLOBAL)
    return path


# ------------------------------------------------------------------ module bytes, written here
# str/bytes: u64 length + data; array: u64 count + items; dtype: u8 code, u8 bits, u16 lanes.


def _s(b) -> bytes:
    b = b.encode() if isinstance(b, str) else b
    return struct.pack("<Q", len(b)) + b


def _array(items) -> bytes:
    return struct.pack("<Q", len(items)) + b"".join(items)


DT = {"handle": (3, 64), "int32": (0, 32), "int64": (0, 64), "uint32": (1, 32), "float32": (2, 32)}


def module_bytes(kernels: list[tuple[str, list[str], list[str]]], source: str, fmt: str = "cl") -> bytes:
    """kernels: (name, argument dtypes, launch tags)."""
    table = b"".join(
        _s(name) + _s(name) + _array([struct.pack("<BBH", *DT[t], 1) for t in args])
        + _array([_s(tag) for tag in tags]) + _array([struct.pack("<i", 0) for _ in args])
        for name, args, tags in kernels)
    return _s(fmt) + struct.pack("<Q", len(kernels)) + table + _s(source)


def parse_module_bytes(blob: bytes) -> tuple[str, list[tuple[str, list[str], list[str]]], str]:
    """(fmt, kernels, source), reading the layout module_bytes() writes; asserts it is all used."""
    pos = 0

    def take(fmt):
        nonlocal pos
        value = struct.unpack_from(fmt, blob, pos)
        pos += struct.calcsize(fmt)
        return value

    def string():
        nonlocal pos
        (n,) = take("<Q")
        pos += n
        return blob[pos - n:pos].decode()

    names = {v: k for k, v in DT.items()}
    fmt = string()
    kernels = []
    for _ in range(take("<Q")[0]):
        key, name = string(), string()
        assert key == name
        args = [names[take("<BBH")[:2]] for _ in range(take("<Q")[0])]
        tags = [string() for _ in range(take("<Q")[0])]
        extra = [take("<i")[0] for _ in range(take("<Q")[0])]
        assert extra == [0] * len(extra)
        kernels.append((name, args, tags))
    source = string()
    assert pos == len(blob), f"{len(blob) - pos} bytes left over"
    return fmt, kernels, source


def load_module(blob: bytes):
    return tvm.get_global_func("ffi.Module.load_from_bytes.opencl")(blob)


def ptr(t) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


AXPY = """// Function: axpy
__kernel void axpy(__global float* restrict y, __global const float* restrict x, float a, long n, int off) {
  long i = get_global_id(0);
  if (i < n) y[i] = a * x[i + off] + y[i];
}
// Function: grid2d
__kernel void grid2d(__global int* restrict out, uint width) {
  size_t x = get_global_id(0), y = get_global_id(1);
  out[y * width + x] = (int)(get_group_id(0) * 1000000 + get_group_id(1) * 10000 + get_local_id(0) * 100
                             + get_local_id(1));
}
"""
KERNELS = [("axpy", ["handle", "handle", "float32", "int64", "int32"], ["blockIdx.x", "threadIdx.x"]),
           # tags in another order than the dimensions: each names the launch argument it takes
           ("grid2d", ["handle", "uint32"], ["threadIdx.y", "blockIdx.x", "threadIdx.x", "blockIdx.y"])]


# ------------------------------------------------------------------ tests


def test_cl_api_numbers_are_the_khronos_ones():
    ours = dict(re.findall(r"constexpr \w+ (CL_\w+) = (.+?);", (OPENCL_SOURCE_DIR / "cl_api.h").read_text()))
    headers = Path("/usr/include/CL/cl.h").read_text() + Path("/usr/include/CL/cl_ext.h").read_text()
    theirs = dict(re.findall(r"#define (CL_\w+)\s+(\S[^/\n]*?)\s*(?:/\*.*)?$", headers, re.M))
    assert len(ours) > 40
    for name, value in ours.items():
        assert name in theirs, f"{name} is not in the Khronos headers"
        assert eval(value) == eval(theirs[name]), f"{name}: ours {value}, Khronos {theirs[name]}"


def test_device_attributes_are_what_pyopencl_reports(plugin):
    dev = tvm.opencl(0)
    assert dev.exist
    assert dev.device_name == POCL.name
    assert dev.max_threads_per_block == POCL.max_work_group_size
    assert dev.max_shared_memory_per_block == POCL.local_mem_size
    assert dev.multi_processor_count == POCL.max_compute_units
    assert dev.driver_version == POCL.driver_version
    info = json.loads(tvm.get_global_func("edgesmith.opencl.device_info")())
    assert info["global_mem_bytes"] == POCL.global_mem_size and info["fp16"] is False
    assert info["type"] == "cpu" and info["platform"] == "Portable Computing Language"


def test_copies_between_host_and_device_and_on_the_device(plugin):
    dev = tvm.opencl(0)
    a = np.arange(1000, dtype="float32") * 0.5
    on_dev = tvm.runtime.tensor(a, dev)
    np.testing.assert_array_equal(on_dev.numpy(), a)
    other = tvm.runtime.empty((1000,), "float32", dev)
    on_dev.copyto(other)  # device -> device
    np.testing.assert_array_equal(other.numpy(), a)
    # views: a byte offset into the same buffer, both directions
    view = other._create_view((10,), "float32", relative_byte_offset=4 * 990)
    np.testing.assert_array_equal(view.numpy(), a[990:])
    view.copyfrom(np.full(10, -1, "float32"))
    np.testing.assert_array_equal(other.numpy()[985:], np.r_[a[985:990], np.full(10, -1, "float32")])
    empty = tvm.runtime.empty((0,), "float32", dev)  # a zero-size tensor still allocates and frees
    assert empty.numpy().shape == (0,)


def test_launch_grid_and_arguments_of_a_module_written_here(plugin):
    mod = load_module(module_bytes(KERNELS, AXPY))
    dev = tvm.opencl(0)
    n, off = 1000, 3
    x = np.random.default_rng(0).random(n + off).astype("float32")
    y = np.random.default_rng(1).random(n).astype("float32")
    tx, ty = tvm.runtime.tensor(x, dev), tvm.runtime.tensor(y, dev)
    mod["axpy"](ptr(ty), ptr(tx), 2.5, n, off, (n + 63) // 64, 64)  # 16 groups of 64
    np.testing.assert_allclose(ty.numpy(), 2.5 * x[off:] + y, rtol=1e-6)
    # 2-D: groups (3, 2) of (4, 5) work-items; every item writes who it is
    width = 12
    out = tvm.runtime.empty((10, width), "int32", dev)
    mod["grid2d"](ptr(out), width, 5, 3, 4, 2)  # threadIdx.y=5, blockIdx.x=3, threadIdx.x=4, blockIdx.y=2
    gy, gx = np.mgrid[0:10, 0:width]
    want = (gx // 4) * 1000000 + (gy // 5) * 10000 + (gx % 4) * 100 + gy % 5
    np.testing.assert_array_equal(out.numpy(), want)
    with pytest.raises(Exception, match="called with 3 arguments, expects 7"):
        mod["axpy"](ptr(ty), ptr(tx), 1.0)


def test_malformed_module_bytes_fail_clearly(plugin):
    blob = module_bytes(KERNELS, AXPY)
    with pytest.raises(Exception, match="cut short"):
        load_module(blob[:-100])
    with pytest.raises(Exception, match="format 'xclbin'"):
        load_module(module_bytes(KERNELS, AXPY, fmt="xclbin"))
    with pytest.raises(Exception, match="kernel 'axpy' has no source"):
        load_module(module_bytes(KERNELS, AXPY.replace("// Function: axpy", "// Function: other")))


def test_a_kernel_that_does_not_build_shows_the_compilers_log(plugin):
    bad = "// Function: broken\n__kernel void broken(__global float* y) { y[0] = undefined_name; }\n"
    mod = load_module(module_bytes([("broken", ["handle"], ["threadIdx.x"])], bad))
    y = tvm.runtime.empty((4,), "float32", tvm.opencl(0))
    with pytest.raises(Exception) as err:
        mod["broken"](ptr(y), 1)
    msg = str(err.value)
    assert "building OpenCL kernel 'broken'" in msg and "CL_BUILD_PROGRAM_FAILURE" in msg
    assert "undefined_name" in msg and "\n" not in msg.strip()  # PoCL's own diagnostic, one line
    log = Path(re.search(r"full log: (\S+)\)", msg).group(1))
    assert "undefined_name" in log.read_text()


def test_compiled_library_bytes_parse_as_written_here(plugin, tmp_path):
    """A TVM-compiled OpenCL library (dynamic size, scalar argument): its module bytes have the
    layout module_bytes() writes, and its kernels run right through the plug-in."""
    n = te.var("n", "int64")
    alpha = te.var("alpha", "float32")
    a = te.placeholder((n,), "float32", name="a")
    b = te.compute((n,), lambda i: a[i] * alpha + 1.0, name="b")
    func = te.create_prim_func([a, alpha, b]).with_attr("global_symbol", "scale")
    target = tvm.target.Target(dict(PRESET.tvm_target(), host={"kind": "llvm"}))
    from edgesmith.targets.tvm_api import dlight

    with target:
        mod = dlight.ApplyDefaultSchedule(dlight.gpu.Fallback())(tvm.IRModule({"scale": func}))
    tvm.compile(mod, target=target).export_library(str(tmp_path / "scale.so"))
    blobs = []
    original = tvm.get_global_func("ffi.Module.load_from_bytes.opencl")

    def spy(blob):
        blobs.append(bytes(blob))
        return original(blob)

    tvm.register_global_func("ffi.Module.load_from_bytes.opencl", spy, override=True)
    try:
        lib = tvm.runtime.load_module(str(tmp_path / "scale.so"))
    finally:
        tvm.register_global_func("ffi.Module.load_from_bytes.opencl", original, override=True)
    (blob,) = blobs
    fmt, kernels, source = parse_module_bytes(blob)
    assert fmt == "cl" and blob == module_bytes(kernels, source)
    (name, args, tags), = kernels
    params = re.search(rf"__kernel void {name}\(([^)]*)\)", source).group(1).split(",")
    assert len(args) == len(params)
    for arg, param in zip(args, params):  # buffers are handles, scalars keep their type
        assert (arg == "handle") == ("__global" in param), (arg, param)
    assert sorted(args) == ["float32", "handle", "handle", "int64"] and sorted(tags) == ["blockIdx.x", "threadIdx.x"]
    dev = tvm.opencl(0)
    x = np.random.default_rng(2).random(3000).astype("float32")
    out = tvm.runtime.empty((3000,), "float32", dev)
    lib["scale"](tvm.runtime.tensor(x, dev), 0.25, out)
    np.testing.assert_allclose(out.numpy(), x * 0.25 + 1.0, rtol=1e-6)


# ------------------------------------------------------------------ fresh processes
# The device is chosen once per process: what depends on the environment runs in its own.

SCRIPT = """
import ctypes, json, sys, tvm
ctypes.CDLL(sys.argv[1], ctypes.RTLD_GLOBAL)
import numpy as np
what = sys.argv[2]
dev = tvm.opencl(0)
try:
    if what == "one-big":
        tvm.runtime.empty((300 << 20,), "uint8", dev)
    elif what == "many":
        keep = [tvm.runtime.empty((250 << 20,), "uint8", dev) for _ in range(5)]
    elif what == "axpy":
        exec(sys.argv[3])
    print(json.dumps({"ok": True, "report": json.loads(tvm.get_global_func("edgesmith.opencl.report")())}))
except Exception as err:
    print(json.dumps({"ok": False, "error": str(err)}))
"""


def _fresh(plugin, what, env=None, code=""):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(plugin), what, code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_out_of_device_memory_is_one_clear_error(plugin):
    # PoCL's own knob: its device reports 1 GiB, of which one buffer may take 256 MiB
    limit = {"POCL_MEMORY_LIMIT": "1"}
    got = _fresh(plugin, "one-big", limit)
    assert not got["ok"] and got["error"].startswith("out of device memory on 'pthread")
    assert "CL_DEVICE_MAX_MEM_ALLOC_SIZE" in got["error"] and "300.0 MiB more" in got["error"]
    got = _fresh(plugin, "many", limit)
    assert not got["ok"] and "CL_DEVICE_GLOBAL_MEM_SIZE reached" in got["error"]
    assert "250.0 MiB more on top of 1000.0 MiB in use, the device has 1024.0 MiB" in got["error"]  # the 5th
    assert _fresh(plugin, "many")["ok"]  # the same without the limit


def test_built_programs_are_cached_on_disk_for_the_next_start(plugin, tmp_path):
    code = (f"from test_opencl_runtime import module_bytes, KERNELS, AXPY, ptr; "
            "m = tvm.get_global_func('ffi.Module.load_from_bytes.opencl')(module_bytes(KERNELS, AXPY)); "
            "y = tvm.runtime.tensor(np.zeros(8, 'float32'), dev); m['axpy'](ptr(y), ptr(y), 1.0, 8, 0, 1, 8)")
    env = {"EDGESMITH_OPENCL_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(Path(__file__).parent)}
    first = _fresh(plugin, "axpy", env, code)["report"]["programs"]
    assert (first["built"], first["from_cache"], first["cache_writes"]) == (1, 0, 1)
    second = _fresh(plugin, "axpy", env, code)["report"]["programs"]
    assert (second["built"], second["from_cache"]) == (0, 1)
    (cached,) = (tmp_path / "cache").glob("*.bin")
    cached.write_bytes(cached.read_bytes()[:100])  # truncated: not trusted, rebuilt and rewritten
    third = _fresh(plugin, "axpy", env, code)["report"]["programs"]
    assert (third["built"], third["from_cache"], third["cache_writes"]) == (1, 0, 1)
    off = _fresh(plugin, "axpy", {**env, "EDGESMITH_OPENCL_CACHE": "off"}, code)["report"]["programs"]
    assert (off["built"], off["cache_writes"], off["cache_dir"]) == (1, 0, "")
