"""Our WebGPU device runtime (runtime/runner/webgpu/, libedgesmith_webgpu.so) loaded into this
process beside TVM, on lavapipe (Mesa's Vulkan on the CPU, installed by scripts/install.sh).

References are independent of the plug-in: numpy for every result; wgpu (the Python package: the
same wgpu-native through another binding) for the adapter's facts; module bytes written here from
the format TVM 0.27 serializes (read off apache/tvm's WebGPUFallbackModuleNode::SaveToBytes and
web/emcc/webgpu_runtime.cc, and checked against the bytes a compiled library carries in
test_compiled_library_bytes_parse_as_written_here); kernels written here in WGSL with TVM's
binding layout (web/src/webgpu.ts binds them the same way).

Whole bundles through the runner: tests/test_vulkan_bundles.py.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import struct
import subprocess
import sys

import numpy as np
import pytest
import tvm
from tvm import te

from edgesmith.targets.presets import get_preset
from edgesmith.targets.runner_build import build_webgpu_plugin
from edgesmith.targets.runtime_libs import wgpu_library

from lavapipe import ADAPTER, needs_lavapipe  # noqa: E402

PRESET = get_preset("linux-vulkan")
pytestmark = needs_lavapipe


@pytest.fixture(scope="module")
def plugin():
    """The plug-in, loaded once into this process (RTLD_GLOBAL: it registers TVM globals), with the
    wgpu-native the bundle would ship."""
    os.environ["EDGESMITH_WGPU_LIBRARY"] = str(wgpu_library(PRESET))
    path = build_webgpu_plugin(PRESET)
    ctypes.CDLL(str(path), ctypes.RTLD_GLOBAL)
    return path


DEV = tvm.device("webgpu", 0)


# ------------------------------------------------------------------ module bytes, written here
# str: u64 length + data; array: u64 count + items; dtype: u8 code, u8 bits, u16 lanes.

def _s(b) -> bytes:
    b = b.encode() if isinstance(b, str) else b
    return struct.pack("<Q", len(b)) + b


def _array(items) -> bytes:
    return struct.pack("<Q", len(items)) + b"".join(items)


DT = {"handle": (3, 64), "int32": (0, 32), "uint32": (1, 32), "float32": (2, 32)}


def module_bytes(kernels: list[tuple[str, list[str], list[str]]], shaders: dict[str, str]) -> bytes:
    """kernels: (name, argument dtypes, tags: launch tags and the paramWriteAccess tag)."""
    table = b"".join(
        _s(name) + _s(name) + _array([struct.pack("<BBH", *DT[t], 1) for t in args])
        + _array([_s(tag) for tag in tags]) + _array([])  # no extra tags (TVM writes none for WebGPU)
        for name, args, tags in kernels)
    return struct.pack("<Q", len(kernels)) + table + _array([_s(k) + _s(v) for k, v in shaders.items()])


def parse_module_bytes(blob: bytes):
    """(kernels, shaders), reading the layout module_bytes() writes; asserts it is all used."""
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
    kernels = []
    for _ in range(take("<Q")[0]):
        key, name = string(), string()
        assert key == name
        args = [names[take("<BBH")[:2]] for _ in range(take("<Q")[0])]
        tags = [string() for _ in range(take("<Q")[0])]
        assert take("<Q")[0] == 0  # argument extra tags
        kernels.append((name, args, tags))
    shaders = {}
    for _ in range(take("<Q")[0]):
        name = string()
        shaders[name] = string()
    assert pos == len(blob), f"{len(blob) - pos} bytes left over"
    return kernels, shaders


def load_module(blob: bytes):
    return tvm.get_global_func("ffi.Module.load_from_bytes.webgpu")(blob)


def ptr(t) -> ctypes.c_void_p:
    """A kernel's buffer argument: the tensor's data pointer (its WGPUBuffer), as TVM's host code passes it."""
    return ctypes.c_void_p(t.data_ptr())


# TVM's layout: buffers at bindings 0.., then the scalars' uniform struct ending in packGridDimX;
# blockIdx.x = blockIdx.z * gridDim.x + blockIdx.x.
AXPY = """
@group(0) @binding(0) var<storage, read_write> y : array<f32>;
@group(0) @binding(1) var<storage, read> x : array<f32>;
struct PODArgs { a: f32, n: i32, off: u32, packGridDimX: u32 }
@group(0) @binding(2) var<uniform> pod : PODArgs;
@compute @workgroup_size(64, 1, 1)
fn axpy(@builtin(workgroup_id) blockIdx : vec3<u32>, @builtin(num_workgroups) gridDim : vec3<u32>,
        @builtin(local_invocation_id) threadIdx : vec3<u32>) {
  if (blockIdx.z * gridDim.x + blockIdx.x > pod.packGridDimX) { return; }
  let i = i32((blockIdx.z * gridDim.x + blockIdx.x) * 64u + threadIdx.x);
  if (i < pod.n) { y[i] = pod.a * x[u32(i) + pod.off] + y[i]; }
}
"""
# every workgroup (x, y) adds one to its own cell: each must run exactly once
COUNT = """
@group(0) @binding(0) var<storage, read_write> hits : array<atomic<u32>>;
struct PODArgs { width: u32, packGridDimX: u32 }
@group(0) @binding(1) var<uniform> pod : PODArgs;
@compute @workgroup_size(1, 1, 1)
fn count(@builtin(workgroup_id) blockIdx : vec3<u32>, @builtin(num_workgroups) gridDim : vec3<u32>) {
  let bx = blockIdx.z * gridDim.x + blockIdx.x;
  if (bx > pod.packGridDimX) { return; }
  atomicAdd(&hits[blockIdx.y * pod.width + bx], 1u);
}
"""
KERNELS = [("axpy", ["handle", "handle", "float32", "int32", "uint32"],
            ["blockIdx.x", "threadIdx.x", "paramWriteAccess:[1,0]"]),
           ("count", ["handle", "uint32"], ["blockIdx.y", "blockIdx.x", "paramWriteAccess:[1]"])]


# ------------------------------------------------------------------ tests


def test_adapter_facts_are_what_wgpu_reports(plugin):
    (ours,) = [a for a in json.loads(tvm.get_global_func("edgesmith.webgpu.adapters")()) if "llvmpipe" in a["name"]]
    info, limits = ADAPTER["info"], ADAPTER["limits"]
    assert ours["name"] == info["device"] and ours["driver"] == info["description"]
    assert ours["backend"] == "vulkan" and ours["type"] == "cpu" and ours["vendor_id"] == info["vendor_id"]
    assert ours["shader_f16"] == ("shader-f16" in ADAPTER["features"])
    assert ours["timestamp_query"] == ("timestamp-query" in ADAPTER["features"])
    for key, value in ours["limits"].items():
        assert value == limits[key.replace("_", "-")], key
    assert tvm.get_global_func("edgesmith.webgpu.device_info")() == json.dumps(ours)


@pytest.mark.parametrize("offset,size", [(0, 4096), (0, 7), (3, 10), (5, 1), (6, 2), (1001, 3001)])
def test_copies_between_host_and_device_and_on_the_device(plugin, offset, size):
    """WebGPU copies whole 4-byte words: any other offset or size goes through the host, exactly."""
    rng = np.random.default_rng(offset + size)
    base = rng.integers(0, 256, 8192, dtype=np.uint8)
    a = tvm.runtime.tensor(base, DEV)
    src = rng.integers(0, 256, size, dtype=np.uint8)
    view = a._create_view((size,), "uint8", relative_byte_offset=offset)
    view.copyfrom(src)  # host -> device into the middle of a buffer
    want = base.copy()
    want[offset:offset + size] = src
    np.testing.assert_array_equal(a.numpy(), want)  # nothing around it touched
    np.testing.assert_array_equal(view.numpy(), src)  # device -> host of a part
    b = tvm.runtime.tensor(np.zeros(8192, np.uint8), DEV)
    dst = b._create_view((size,), "uint8", relative_byte_offset=(offset * 7) % 4096)
    view.copyto(dst)  # device -> device
    got = b.numpy()
    np.testing.assert_array_equal(got[(offset * 7) % 4096:][:size], src)
    assert got.sum() == src.sum(dtype=np.int64)


def test_launch_arguments_and_a_grid_past_65535_workgroups(plugin):
    mod = load_module(module_bytes(KERNELS, {"axpy": AXPY, "count": COUNT}))
    n = 3000
    x = np.random.default_rng(1).random(n + 5).astype("float32")
    y0 = np.random.default_rng(2).random(n).astype("float32")
    y = tvm.runtime.tensor(y0, DEV)
    xs = tvm.runtime.tensor(x, DEV)
    mod["axpy"](ptr(y), ptr(xs), 0.5, n, 5, (n + 63) // 64, 64)
    np.testing.assert_allclose(y.numpy(), 0.5 * x[5:] + y0, rtol=1e-6)
    # 70001 x 3 workgroups: x is spread over z (70001 > 65535 a dimension) and each runs once
    width, rows = 70001, 3
    hits = tvm.runtime.tensor(np.zeros(width * rows, np.uint32), DEV)
    mod["count"](ptr(hits), width, rows, width)  # tags in another order than the dimensions
    np.testing.assert_array_equal(hits.numpy(), np.ones(width * rows, np.uint32))
    mod["count"](ptr(hits), width, rows, 0)  # an empty grid runs nothing
    np.testing.assert_array_equal(hits.numpy(), np.ones(width * rows, np.uint32))
    report = json.loads(tvm.get_global_func("edgesmith.webgpu.report")())
    assert report["pipelines"]["built"] >= 2 and report["dispatches"] >= 2


def test_malformed_module_bytes_fail_clearly(plugin):
    good = module_bytes(KERNELS, {"axpy": AXPY, "count": COUNT})
    with pytest.raises(Exception, match="WebGPU module is cut short"):
        load_module(good[:-10])
    with pytest.raises(Exception, match="has no WGSL in the model library"):
        load_module(module_bytes(KERNELS, {"axpy": AXPY}))
    bad_tags = [("axpy", KERNELS[0][1], ["blockIdx.x", "threadIdx.x"])]
    with pytest.raises(Exception, match="does not say which of its 2 buffers it writes"):
        load_module(module_bytes(bad_tags, {"axpy": AXPY}))


def test_a_kernel_whose_wgsl_does_not_compile_shows_wgpus_message(plugin):
    broken = AXPY.replace("pod.a * x", "pod.a * undefined_thing * x")
    mod = load_module(module_bytes(KERNELS[:1], {"axpy": broken}))
    y = tvm.runtime.tensor(np.zeros(64, "float32"), DEV)
    with pytest.raises(Exception) as err:
        mod["axpy"](ptr(y), ptr(y), 1.0, 64, 0, 1, 64)
    msg = str(err.value).splitlines()[0]
    assert "compiling kernel 'axpy' (WGSL) failed on 'llvmpipe" in msg and "undefined_thing" in msg


def test_compiled_library_bytes_parse_as_written_here(plugin, tmp_path):
    """A TVM-compiled WebGPU library (dynamic size, scalar argument): its module bytes have the
    layout module_bytes() writes, and its kernel runs right through the plug-in."""
    n = te.var("n", "int32")
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
    original = tvm.get_global_func("ffi.Module.load_from_bytes.webgpu")

    def spy(blob):
        blobs.append(bytes(blob))
        return original(blob)

    tvm.register_global_func("ffi.Module.load_from_bytes.webgpu", spy, override=True)
    try:
        lib = tvm.runtime.load_module(str(tmp_path / "scale.so"))
    finally:
        tvm.register_global_func("ffi.Module.load_from_bytes.webgpu", original, override=True)
    (blob,) = blobs
    kernels, shaders = parse_module_bytes(blob)
    assert blob == module_bytes(kernels, shaders)
    (name, args, tags), = kernels
    assert sorted(args) == ["float32", "handle", "handle", "int32"]
    assert sorted(tags) == ["blockIdx.x", "paramWriteAccess:[0,1]", "threadIdx.x"] or \
        sorted(tags) == ["blockIdx.x", "paramWriteAccess:[1,0]", "threadIdx.x"]
    wgsl = shaders[name]
    assert f"fn {name}(" in wgsl and "packGridDimX: u32" in wgsl
    assert len(re.findall(r"var<storage, read(_write)?>", wgsl)) == args.count("handle")
    x = np.random.default_rng(2).random(100_000).astype("float32")
    out = tvm.runtime.empty((100_000,), "float32", DEV)
    lib["scale"](tvm.runtime.tensor(x, DEV), 0.25, out)
    np.testing.assert_allclose(out.numpy(), x * 0.25 + 1.0, rtol=1e-6)


# ------------------------------------------------------------------ fresh processes
# The adapter is chosen once per process: what depends on the environment runs in its own.

SCRIPT = """
import ctypes, json, sys, tvm
ctypes.CDLL(sys.argv[1], ctypes.RTLD_GLOBAL)
import numpy as np
what = sys.argv[2]
dev = tvm.device("webgpu", 0)
try:
    if what == "alloc":
        tvm.runtime.empty((int(sys.argv[3]),), "uint8", dev)
    elif what == "bind":
        exec(sys.argv[3])
    print(json.dumps({"ok": True, "report": json.loads(tvm.get_global_func("edgesmith.webgpu.report")())}))
except Exception as err:
    print(json.dumps({"ok": False, "error": str(err).splitlines()[0]}))
"""


def _fresh(plugin, what, env=None, arg="64"):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(plugin), what, arg], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_no_library_no_adapter_no_gpu(plugin, tmp_path):
    got = _fresh(plugin, "alloc", {"EDGESMITH_WGPU_LIBRARY": "/nonexistent/libwgpu_native.so"})
    assert not got["ok"] and got["error"].startswith("no WebGPU library (wgpu-native): /nonexistent/libwgpu_native.so")
    # the Vulkan loader pointed at no driver: wgpu finds no adapter
    got = _fresh(plugin, "alloc", {"VK_ICD_FILENAMES": str(tmp_path / "none.json"),
                                   "VK_DRIVER_FILES": str(tmp_path / "none.json")})
    assert not got["ok"] and got["error"].startswith("no WebGPU adapter: wgpu-native found no Vulkan device")
    assert "mesa-vulkan-drivers" in got["error"]
    got = _fresh(plugin, "alloc", {"EDGESMITH_WEBGPU_ADAPTER": "gpu"})
    assert not got["ok"] and "no WebGPU adapter matches EDGESMITH_WEBGPU_ADAPTER='gpu'" in got["error"]
    assert "0: llvmpipe" in got["error"] and "(cpu)" in got["error"]
    got = _fresh(plugin, "alloc", {"EDGESMITH_WEBGPU_ADAPTER": "cpu"})
    assert got["ok"] and got["report"]["adapter"]["type"] == "cpu"


def test_out_of_device_memory_is_one_clear_error(plugin):
    max_buffer = ADAPTER["limits"]["max-buffer-size"]
    got = _fresh(plugin, "alloc", arg=str(max_buffer + (64 << 20)))
    assert not got["ok"] and got["error"].startswith("out of device memory on 'llvmpipe")
    assert "is more than the device's maxBufferSize" in got["error"]
    # a buffer the device holds but cannot bind to a kernel (lavapipe: 128 MiB a binding)
    big = ADAPTER["limits"]["max-storage-buffer-binding-size"] + (8 << 20)
    code = (f"from test_webgpu_runtime import *; mod = load_module(module_bytes(KERNELS, {{'axpy': AXPY, 'count': COUNT}}));"
            f"y = tvm.runtime.empty(({big // 4},), 'float32', dev); mod['axpy'](ptr(y), ptr(y), 1.0, 64, 0, 1, 64);"
            "tvm.get_global_func('runtime.Device_StreamSync')(dev, 0)")
    got = _fresh(plugin, "bind", {"PYTHONPATH": os.path.dirname(__file__) + os.pathsep + os.environ.get("PYTHONPATH", "")},
                 arg=code)
    assert not got["ok"] and "kernel 'axpy' binds a buffer of 136.0 MiB" in got["error"]
    assert "binds at most 128.0 MiB (maxStorageBufferBindingSize)" in got["error"]
