"""GPU presets: each compiles random:tiny at q4f16 into a bundle holding its library and the
generated kernel sources (Vulkan presets: TVM's WebGPU kernels, WGSL).

What runs where: OpenCL bundles end to end on PoCL in test_opencl_bundles.py (our OpenCL runtime:
test_opencl_runtime.py), single kernels in test_pocl_kernels.py; Vulkan bundles on lavapipe in
test_vulkan_bundles.py (our WebGPU runtime: test_webgpu_runtime.py); the CUDA bundle end to end in
bench/cuda_check.py on a GPU machine. Here: what the CPU can check.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tarfile

import pytest
import tvm

from edgesmith.cli import main as cli_main
from edgesmith.compiler.build import compile_bundle
from edgesmith.targets.presets import GPU_PRESETS, PRESETS, get_preset

RUNNABLE = [p.name for p in GPU_PRESETS]
EXT = {"opencl": "cl", "metal": "metal", "cuda": "cu", "webgpu": "wgsl"}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    made = {}

    def get(name):
        if name not in made:
            made[name] = compile_bundle("random:tiny", "q4f16", name, tmp_path_factory.mktemp(name) / "b")
        return made[name]

    return get


def _manifest(bundle):
    return json.loads((bundle / "manifest.json").read_text())


def test_gpu_presets_carry_their_limits_as_data():
    assert {p.name for p in GPU_PRESETS} == {"android-opencl", "android-mali", "android-vulkan", "linux-vulkan",
                                             "arm64-linux-vulkan", "apple-metal", "cuda", "linux-opencl",
                                             "arm64-linux-mali", "arm64-linux-adreno"}
    for p in GPU_PRESETS:
        assert PRESETS[p.name] is p
        limits = p.gpu.limits()
        assert limits["max_threads_per_block"] > 0 and limits["max_shared_memory_per_block"] >= 16384
        assert limits["vector_width_bytes"] > 0 and limits["thread_warp_size"] >= 1
        target = tvm.target.Target(p.tvm_target())
        assert target.kind.name == p.gpu.api and "gpu" in target.keys
        # TVM's webgpu target kind names the work-group limit max_num_threads only
        key = "max_num_threads" if p.gpu.api == "webgpu" else "max_threads_per_block"
        assert int(target.attrs[key]) == p.gpu.max_threads_per_block
        assert target.host.kind.name == "llvm"
    assert "adreno" in tvm.target.Target(get_preset("android-opencl").tvm_target()).keys


@pytest.mark.parametrize("name", RUNNABLE)
def test_gpu_preset_compiles_tiny_q4f16(name, bundles):
    bundle = bundles(name)
    m = _manifest(bundle)
    api = get_preset(name).gpu.api
    assert m["quant"] == "q4f16" and m["target"]["preset"] == name
    assert m["device"]["api"] == api and m["device"]["limits"]["max_threads_per_block"] > 0
    # the kernels are in the bundle as source, listed in the manifest, one file per kernel
    k = m["kernels"]
    assert k["language"] == api and f"kernels/module.{EXT[api]}" in m["files"]
    for kernel in ("q4_matmul", "rms_norm", "batch_decode_paged_kv"):
        assert any(n.startswith(kernel) for n in k["names"]), f"{name}: no {kernel} kernel in {k['names']}"
    for n in k["names"]:
        assert f"kernels/{n}.{EXT[api]}" in m["files"]
    # decode's fusions on every GPU backend (tests/test_gpu_fusion.py runs them on PoCL): a float16
    # cache's decoded token derives 6 kernels a layer (2 of them the KV cache's: our split + RoPE +
    # append, the attention; o_proj widens the float16 attention output as it loads it) + 2 for the head
    assert k["decode_launches"]["per_layer"] == [6, 6] and k["decode_launches"]["head"] == 2, k["decode_launches"]
    assert any(n.startswith("q4_matmul_norm") for n in k["names"]), k["names"]
    lib = [f for f in m["files"] if f.startswith("lib/")]
    assert lib == (["lib/model.tar"] if name == "apple-metal" else ["lib/model.so"])


@pytest.mark.parametrize("name", ["android-opencl", "android-mali", "android-vulkan"])
def test_android_gpu_library_is_aarch64_and_says_what_a_phone_needs(name, bundles, capsys):
    bundle = bundles(name)
    assert (bundle / "lib" / "model.so").read_bytes()[18] == 183  # ELF e_machine EM_AARCH64
    m = _manifest(bundle)
    note = m["device"]["runtime_missing"]
    board = "arm64-linux-vulkan" if "vulkan" in name else "arm64-linux-mali"
    assert "bionic" in note and "Android NDK" in note and board in note
    assert not any(f.startswith("bin/") for f in m["files"])
    # running it says so in one line (here, and before any copy to a device: runtime/probe.py)
    assert cli_main(["run", str(bundle), "--tokens", "1", "-n", "1"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "ships no runner" in lines[0] and "Android NDK" in lines[0]


def test_opencl_dequantize_is_fused_into_the_gemv(bundles):
    src = (bundles("android-opencl") / "kernels" / "module.cl").read_text()
    names = _manifest(bundles("android-opencl"))["kernels"]["names"]
    assert not any("dequantize" in n for n in names), "the int4 weight is decoded inside the matmul kernels"
    assert ">>" in src and ("& ((uint" in src or "& (uint)15" in src)


def test_metal_bundle_ships_macos_runtime_and_an_on_device_build(bundles):
    bundle = bundles("apple-metal")
    m = _manifest(bundle)
    for f in ("bin/libtvm_runtime.dylib", "bin/libtvm_runtime_metal.dylib", "bin/libtvm_ffi.dylib",
              "bin/build-on-device.sh", "bin/src/runner.cc", "bin/src/include/tvm/ffi/function.h"):
        assert f in m["files"], f
    assert m["device"]["runtime_libs"] == ["libtvm_runtime_metal.dylib"] and m["device"]["dl_device_type"] == 8
    with tarfile.open(bundle / "lib" / "model.tar") as tar:
        objs = tar.getnames()
        assert "devc.o" in objs  # the Metal kernels, packed into the host object
        head = tar.extractfile(objs[0]).read(8)
    assert head[:4] == b"\xcf\xfa\xed\xfe" and head[4:8] == b"\x0c\x00\x00\x01"  # Mach-O 64, CPU arm64
    assert b"\xcf\xfa\xed\xfe" == (bundle / "bin" / "libtvm_runtime_metal.dylib").read_bytes()[:4]
    assert subprocess.run(["sh", "-n", str(bundle / "bin" / "build-on-device.sh")]).returncode == 0


def test_cuda_bundle_has_runner_and_cuda_runtime(bundles):
    bundle = bundles("cuda")
    m = _manifest(bundle)
    for f in ("bin/runner", "bin/libtvm_runtime.so", "bin/libtvm_runtime_cuda.so", "bin/libcudart.so.13"):
        assert f in m["files"], f
    assert m["device"] == dict(m["device"], api="cuda", dl_device_type=2, runtime_libs=["libtvm_runtime_cuda.so"])
    out = subprocess.run([str(bundle / "bin" / "runner"), "version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and json.loads(out.stdout)["tvm_version"] == m["tvm_version"]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on this machine")
def test_cuda_kernels_compile_with_nvcc(bundles, tmp_path):
    """What the runner's tvm_callback_cuda_compile does on the GPU machine, minus the GPU."""
    src = bundles("cuda") / "kernels" / "module.cu"
    out = subprocess.run(["nvcc", "--fatbin", "-O3", "-arch=sm_90", "-o", str(tmp_path / "k.fatbin"), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "k.fatbin").stat().st_size > 0


def test_inspect_lists_and_prints_kernels(bundles, capsys):
    bundle = bundles("android-opencl")
    assert cli_main(["inspect", str(bundle), "--kernels"]) == 0
    listing = capsys.readouterr().out
    assert "opencl kernels" in listing and "rms_norm_kernel" in listing
    assert cli_main(["inspect", str(bundle), "--kernel", "rms_norm"]) == 0
    assert capsys.readouterr().out.startswith("__kernel void rms_norm_kernel(")
    assert cli_main(["inspect", str(bundle), "--kernel", "no_such"]) == 1
    err = capsys.readouterr().err
    assert "no kernel 'no_such'" in err and len(err.strip().splitlines()) == 1
    assert cli_main(["inspect", str(bundle)]) == 0
    assert "device      opencl" in capsys.readouterr().out




def test_cuda_graph_replays_the_kernels_between_kv_cache_calls(bundles, tmp_path, capsys):
    """--cuda-graph: TVM's RewriteCUDAGraph makes each run of static-shape kernels in decode (those
    between the KV cache's calls) one CUDA graph, captured on its first call and replayed after.
    Its run on a GPU is bench/cuda_check.py's (bundle-graph); here what the compiler made."""
    dump = tmp_path / "ir"
    bundle = compile_bundle("random:tiny", "q4f16", "cuda", tmp_path / "b", dump_ir=dump, cuda_graph=True)
    assert _manifest(bundle)["kernels"]["cuda_graph"] is True
    lowered = sorted(dump.glob("*-lower.py"))[-1].read_text()
    decode = lowered[lowered.index("def decode("):]
    decode = decode[:decode.index("@R.function")]  # up to the next function (the captured ones follow)
    # random:tiny's 2 layers: the kernels before, between and after the KV cache's 2 calls, 3 graphs
    assert decode.count('"vm.builtin.cuda_graph.run_or_capture"') == 3, decode
    # the embedding's gather reads the token ids, a new buffer each call: it stays out of the graphs
    assert any("q4_take" in line and "input_ids" in line and "run_or_capture" not in line
               for line in decode.splitlines())
    # the VM calls the graph builtin by name; a bundle compiled without the option never does
    plain = bundles("cuda")
    assert _manifest(plain)["kernels"]["cuda_graph"] is False
    # the same kernels a token, counted inside the graphs; 3 replays of them
    graphed, launched = _manifest(bundle)["kernels"]["decode_launches"], _manifest(plain)["kernels"]["decode_launches"]
    assert dict(graphed, graphs=0) == launched and graphed["graphs"] == 3, (graphed, launched)
    assert cli_main(["inspect", str(bundle)]) == 0
    assert "cuda graphs 3 a token" in capsys.readouterr().out
    assert b"cuda_graph.run_or_capture" in (bundle / "lib" / "model.so").read_bytes()
    assert b"cuda_graph.run_or_capture" not in (plain / "lib" / "model.so").read_bytes()
    # any other target refuses it in one line, before writing anything
    assert cli_main(["compile", "random:tiny", "--target", "linux-opencl", "--cuda-graph", "-q",
                     "-o", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "--cuda-graph is for CUDA targets" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
