"""ARM decode and prefill cost without a phone: our int4 kernels beside llama.cpp's, on paper and counted.

    python bench/arm_cost.py [--cores a55,a76,x1,a710] [--n 9216] [--k 3072]
                             [--layers 2] [-p 8] [--steps 4] [--prefill 64] [--no-qemu] [--no-static] [--no-llama]
                             [--only edgesmith:q4f16i8:arm64-linux,...]
                             [--cache bench/models] [--out bench/out/arm_cost.json]

1. Static (llvm-mca): the decode GEMV's inner loop, per 32-weight block, on each core's LLVM
   scheduling model. Ours are built by TVM exactly as the model builds them (the same kernel
   generators, the same target presets) at a Phi-3 width (k=3072 -> n=9216); llama.cpp's are
   its ggml-cpu ARM sources from the llama-cpp-python sdist, cross-compiled with
   aarch64-linux-gnu-gcc for the same CPU flags. The loop is found in the assembly by its back
   edge and a marker instruction (bench/arm_asm.py), and normalized by the weights one iteration
   covers (markers x weights per marker, checked by a second count where there is one). Our
   dotprod prefill GEMM's loop too, per 32 weights x 1 token (llama.cpp's gemm is inline
   assembly with `.inst`-encoded sdot, which llvm-mca cannot read), and arm64-linux-i8mm's (smmla)
   on the cores that have i8mm only (X1/V1, A710/N2).
2. Dynamic (qemu TCG plugin): instructions retired per decoded token by a whole arm64 bundle
   (`runner generate`) and by llama.cpp (bench/llama_decode.cpp on libllama) on the same random
   Phi-3-mini-shaped checkpoint (bench/peer_model.py, `layers` layers), one thread each: a
   prefill of p tokens then n1 and n1 + steps generated tokens; the difference over `steps`.
   Prefill per prompt token: a prompt of --prefill tokens then n1 generated, less the p-token run,
   over the extra prompt tokens.
3. Compute- or memory-bound per core: the bytes one block streams (18: 16 of nibbles and a
   2-byte fp16 scale, in both formats) at the core's clock over its cycles per block is the
   bandwidth one core can consume; beside the bandwidth its reference SoC offers (CORES below
   says where each number comes from).

llvm-mca models a steady-state loop with every load hitting L1 and no front-end stalls; qemu
counts instructions, not cycles. Neither is a device measurement (`edgesmith profile` on the
device is). Runs in minutes (the first run cross-builds llama.cpp: longer).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/NAME.py`: import siblings as bench.NAME from the
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # repo root; bench/ itself never on sys.path
from bench import arm_asm  # noqa: E402
from bench import arm_llama  # noqa: E402
from bench import arm_qemu  # noqa: E402
from bench.common import cached_bundle, table, write_json  # noqa: E402

HERE = Path(__file__).resolve().parent
BLOCK = 32  # weights per block: a q4 group here, a Q4_0 block in llama.cpp
BLOCK_BYTES = 18  # 16 bytes of nibbles + one fp16 scale, in both formats


@dataclass(frozen=True)
class Core:
    key: str
    name: str
    mcpu: str  # llvm-mca's -mcpu
    model_note: str  # which LLVM scheduling model that is, and why it stands in for this core
    ghz: float
    cluster: int  # cores of this kind in the reference SoC (decode threads)
    soc: str  # reference SoC: where the clock and the core count come from
    bw_gbs: tuple[float, float]  # DRAM bandwidth the cluster can use, low..high
    bw_note: str


# Clocks and core counts are the SoC vendors' published specs. Peak DRAM bandwidth is bus width x
# transfer rate (LPDDR4X-4266 x 64 bit = 34.1 GB/s; LPDDR5-6400 x 64 bit = 51.2 GB/s); what CPU
# clusters reach is lower: the ranges are typical phone figures (issue #17), not measured here —
# on a device, `edgesmith profile` measures it (the runner's membw).
CORES = {c.key: c for c in [
    Core("a55", "Cortex-A55", "cortex-a55", "LLVM's Cortex-A55 model (in-order, dual issue)", 1.8, 4,
         "Snapdragon 855/865/888 little cluster: 4x A55 at 1.8 GHz", (10.0, 15.0),
         "little cluster of an LPDDR4X/5 phone (peak 34-51 GB/s; the little cluster reaches far less)"),
    Core("a76", "Cortex-A76", "neoverse-n1", "Neoverse N1 model: N1 is the A76's server derivative "
         "(LLVM 19 gives -mcpu=cortex-a76 its Cortex-A57 model)", 2.42, 4,
         "Snapdragon 855: 1x A76 at 2.84 + 3x A76 at 2.42 GHz", (25.0, 35.0),
         "LPDDR4X-4266, 64-bit: 34.1 GB/s peak"),
    Core("x1", "Cortex-X1", "neoverse-v1", "Neoverse V1 model: V1 is derived from the X1, 4x128-bit NEON "
         "(LLVM 19 gives -mcpu=cortex-x1 its Cortex-A57 model)", 2.84, 1,
         "Snapdragon 888: 1x X1 at 2.84 GHz", (25.0, 35.0), "LPDDR5-6400, 64-bit: 51.2 GB/s peak; one core"),
    Core("a710", "Cortex-A710", "cortex-a710", "LLVM's own choice for -mcpu=cortex-a710: its Neoverse N2 model",
         2.5, 3, "Snapdragon 8 Gen 1: 3x A710 at 2.5 GHz", (25.0, 35.0), "LPDDR5-6400, 64-bit: 51.2 GB/s peak"),
]}


@dataclass(frozen=True)
class Kernel:
    key: str
    engine: str
    label: str
    flags: str  # edgesmith: the target preset; llama.cpp: -march
    source: str  # edgesmith: the generator (q4_gemv, q4_gemv_i8, gemv_kernel); llama.cpp: the file (quants, repack)
    function: str  # regex: the function whose innermost loop is the hot loop
    marker: str  # regex on the mnemonic: present once per `weights_per_marker` weights
    weights_per_marker: int
    check: tuple[str, int] | None = None  # (mnemonic, weights per one): must give the same weights
    prefill: bool = False  # a prefill GEMM: "weights" are weight x token products (a block: 32 weights, 1 token)
    steps: bool | None = None  # our int8 kernels: the words in step order (None: as the model stores them)
    cores: tuple[str, ...] | None = None  # only these CORES keys have its instructions (None: every core)


DOTPROD_MARCH = "armv8.2-a+dotprod+fp16+fp16fml"  # = arm64-linux-dotprod's +v8.2a,+dotprod,+fullfp16,+fp16fml
BASE_MARCH = "armv8-a"  # = arm64-linux's +neon
I8MM_MARCH = "armv8.6-a+dotprod+fp16+fp16fml+i8mm"  # = arm64-linux-i8mm's +v8.6a,+i8mm,+dotprod,+fullfp16,...


def kernels(k: int, group: int = 32) -> list[Kernel]:
    from edgesmith.compiler.kernels import cpu as k_exprs
    from edgesmith.compiler.kernels import int8 as kernels_int8

    f_lanes = k_exprs._lanes(k // 8, group // 8)  # words per inner step of the float GEMV
    dot = next(isa for isa in kernels_int8.ISAS if isa.name == "dotprod")
    lam = r"\.L__tvm_parallel_lambda\d*"  # the parallel body holds the row and block loops
    return [
        Kernel("es-q4f16-v8", "edgesmith", "q4f16 GEMV (float x)", "arm64-linux", "q4_gemv", lam, "prfm",
               f_lanes * 8),
        Kernel("es-q4f16-dot", "edgesmith", "q4f16 GEMV (float x)", "arm64-linux-dotprod", "q4_gemv", lam, "prfm",
               f_lanes * 8),
        Kernel("es-q4f16i8-dot-1row", "edgesmith", "q4f16i8 GEMV, one row (int8 x, sdot; before #28)",
               "arm64-linux-dotprod", "q4_gemv_i8", lam, "prfm", dot.lanes * 8, ("sdot", 16)),
        # what arm64-linux-dotprod and android-arm64 decode with now (kernels_int8.gemv_kernel over the
        # words in step order, as the bundle stores them): per row and step of 4 blocks four 16-byte
        # loads, 8 sdot and one fcvtl of its 4 scales (128 weights)
        Kernel("es-q4f16i8-dot", "edgesmith", "q4f16i8 GEMV, 4 rows, step order (int8 x, sdot)", "arm64-linux-dotprod",
               "gemv_kernel", lam, "sdot", 16, ("fcvtl", 128)),
        # the same over the plain word order (before the step order): one ld4 per row and step
        Kernel("es-q4f16i8-dot-ld4", "edgesmith", "q4f16i8 GEMV, 4 rows, ld4 (int8 x, sdot; before)",
               "arm64-linux-dotprod", "gemv_kernel", lam, "sdot", 16, ("ld4", 128), steps=False),
        # and plain arm64-linux at q4f16i8: the same with smull/smlal (8 products each) for sdot
        Kernel("es-q4f16i8-v8", "edgesmith", "q4f16i8 GEMV, 4 rows (int8 x, smull)", "arm64-linux",
               "gemv_kernel", lam, r"smull2?|smlal2?", 8, ("ld4", 128)),
        # llama.cpp: vec_dot is its one-row Q4_0 x Q8_0 dot (what armv8-a decodes with); with dotprod,
        # decode runs the repacked 4-row gemv instead (GGML_CPU_REPACK, on by default).
        Kernel("ll-vecdot-v8", "llama.cpp", "vec_dot_q4_0_q8_0", BASE_MARCH, "quants", "ggml_vec_dot_q4_0_q8_0",
               r"smull2?", 8),  # smull/smull2: 8 int8 products each (vdotq emulated without dotprod)
        Kernel("ll-vecdot-dot", "llama.cpp", "vec_dot_q4_0_q8_0", DOTPROD_MARCH, "quants", "ggml_vec_dot_q4_0_q8_0",
               "sdot", 16),
        Kernel("ll-gemv4x4-dot", "llama.cpp", "gemv_q4_0_4x4_q8_0 (repacked)", DOTPROD_MARCH, "repack",
               "ggml_gemv_q4_0_4x4_q8_0", "sdot", 16),
        # the prefill GEMM, per 32 weights x 1 token: ours (kernels_int8.gemm_kernel -> int8_arm's sdot by
        # element, 8 rows x 4 tokens a tile). llama.cpp's gemm_q4_0_4x4_q8_0 is inline assembly (sdot as
        # `.inst` words, numeric labels) that neither the loop finder nor llvm-mca reads: no static row
        Kernel("es-q4f16i8-dot-gemm", "edgesmith", "q4f16i8 prefill GEMM (sdot by element)", "arm64-linux-dotprod",
               "gemm_kernel", lam + r"\.\d+", "sdot", 16, prefill=True),  # the 2nd parallel body: x quantized in the 1st
        # arm64-linux-i8mm's prefill GEMM (kernels/int8_smmla.py): smmla, 2 rows x 2 tokens x 8 k (32
        # products) each, 8 rows x 4 tokens a tile; one scvtf per 2x2 tile and block (128 products).
        # Costed only on the cores with i8mm: Neoverse V1 (X1's model) and N2 (A710's); A55/A76 have none
        Kernel("es-q4f16i8-mm-gemm", "edgesmith", "q4f16i8 prefill GEMM (smmla)", "arm64-linux-i8mm",
               "gemm_kernel", lam + r"\.\d+", "smmla", 32, ("scvtf", 128), prefill=True, cores=("x1", "a710")),
    ]


def tvm_asm(kernel: Kernel, n: int, k: int, group: int = 32) -> str:
    """The kernel as the model builds it for the preset: same generator, same target, tirx.build."""
    import tvm
    from edgesmith.compiler.kernels import gemv as kernels_gemv
    from edgesmith.compiler.kernels import int8 as kernels_int8
    from edgesmith.targets import presets
    from edgesmith.targets.tvm_api import tirx

    target = tvm.target.Target(presets.get_preset(kernel.flags).tvm_target())
    if kernel.source in ("q4_gemv_i8", "gemv_kernel", "gemm_kernel"):
        isa = kernels_int8.pick(kernels_int8.dot_isas(target), k, group)
        if isa is None or isa.name not in ("dotprod", "neon"):
            raise RuntimeError(f"target {kernel.flags} picks no Arm int8 dot product for k={k} (got {isa})")
        steps = kernel.steps
        if steps is None:  # the word order a bundle stores this shape in for this preset (quantization/q4.py)
            from edgesmith.compiler.kernels.family import kernel_family
            from edgesmith.compiler.quantization.registry import get_quantization

            steps = get_quantization("q4f16i8").stored_in_steps(".q_weight", (n, k // 8), kernel_family(target))
        if kernel.source == "q4_gemv_i8":
            func = kernels_int8.q4_gemv_i8(n, k, group, "float16", isa)
        elif kernel.source == "gemm_kernel":  # with the preset's +i8mm, smmla (kernels/int8_smmla.py)
            from edgesmith.compiler.kernels.family import kernel_family

            func = kernels_int8.gemm_kernel(n, k, group, "float16", isa, steps=steps, i8mm=kernel_family(target).i8mm)
        else:
            func = getattr(kernels_int8, kernel.source)(n, k, group, "float16", isa, steps=steps)
    else:
        if not kernels_gemv.applies(k, group):
            raise RuntimeError(f"the float GEMV does not tile k={k}, group {group}")
        func = kernels_gemv.q4_gemv(n, k, group, "float16")
    lib = tirx.build(tvm.IRModule({"gemv": func.with_attr("global_symbol", "gemv")}), target=target)
    return lib.inspect_source("asm")


# ---------------------------------------------------------------- 1 + 3: llvm-mca and the bandwidth


def static_costs(args, cores: list[Core]) -> list[dict]:
    tool = arm_asm.find_llvm_mca()
    if tool is None:
        raise SystemExit("llvm-mca is not installed: apt-get install llvm-19 (LLVM 19 knows Cortex-A55, "
                         "Neoverse N1/V1/N2 scheduling models)")
    version = arm_asm.mca_version(tool)
    models = {c.key: arm_asm.scheduling_model(tool, c.mcpu) for c in cores}
    print(f"llvm-mca {version}: " + ", ".join(f"{c.name} -> -mcpu={c.mcpu} ({models[c.key]}*)" for c in cores),
          file=sys.stderr)
    llama_src = None
    rows = []
    for kern in kernels(args.k):
        if kern.engine == "llama.cpp":
            if args.no_llama:
                continue
            try:
                llama_src = llama_src or arm_llama.source(args.cache / "llama.cpp-arm")
                asm = arm_llama.kernel_asm(llama_src, kern.flags, args.cache / "llama.cpp-arm" / "asm")
                asm = asm[kern.source]
            except arm_llama.LlamaError as e:
                rows.append({"kernel": kern.key, "engine": kern.engine, "error": str(e)})
                continue
        else:
            asm = tvm_asm(kern, args.n, args.k)
        loop = arm_asm.hot_loop(asm, kern.function, kern.marker)
        weights = loop.markers * kern.weights_per_marker
        if kern.check and loop.count(kern.check[0]) * kern.check[1] != weights:
            raise RuntimeError(f"{kern.key}: {loop.markers} x {kern.marker} says {weights} weights per iteration, "
                               f"{loop.count(kern.check[0])} x {kern.check[0]} says otherwise")
        per = BLOCK / weights  # blocks per iteration, inverted
        same = next((r["kernel"] for r in rows if r.get("loop") == loop.body), None)
        row = {"same_loop_as": same, "kernel": kern.key, "engine": kern.engine, "label": kern.label, "flags": kern.flags,
               "prefill": kern.prefill,
               "function": loop.function, "loop_label": loop.label, "loop_instructions": loop.instructions,
               "straight_line": loop.straight_line, "weights_per_iteration": weights,
               "instructions_per_block": loop.instructions * per, "loop": loop.body, "cores": {}}
        for core in cores:
            if kern.cores is not None and core.key not in kern.cores:
                continue  # the core lacks the instructions (llvm-mca refuses them)
            m = arm_asm.mca(loop.body, core.mcpu, tool)
            cpb = m["cycles_per_iteration"] * per
            demand = BLOCK_BYTES * core.ghz / cpb  # GB/s one core streams at this pace
            cluster = demand * core.cluster
            lo, hi = core.bw_gbs
            verdict = ("compute-bound" if cluster < lo else "memory-bound" if cluster > hi else "at the bandwidth")
            # Cycles well above the busiest unit's pressure: a dependency chain (or, on the in-order
            # A55, issue stalls behind one) sets the pace, not a unit's throughput.
            latency = m["cycles_per_iteration"] > 1.25 * m["busiest_pressure"]
            row["cores"][core.key] = {
                "mcpu": core.mcpu, "scheduling_model": models[core.key], "cycles_per_block": cpb,
                "uops_per_block": m["uops"] / m["iterations"] * per, "ipc": m["ipc"],
                "block_rthroughput_per_block": m["block_rthroughput"] * per,
                "busiest_resource": m["busiest_resource"], "busiest_pressure_per_block": m["busiest_pressure"] * per,
                "bound_by": "latency" if latency else m["busiest_resource"],
                "cycles_per_row": cpb * args.k / BLOCK, "core_gbs": demand, "cluster_gbs": cluster,
                "cores_to_saturate": [lo / demand, hi / demand], "verdict": verdict}
        rows.append(row)
    return rows


# ---------------------------------------------------------------- 2: qemu


def weights_per_token(cfg: dict) -> int:
    """Weights every decode step reads: the layers' linears and the lm_head (the embedding: one row)."""
    h, i, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    head = h // cfg["num_attention_heads"]
    qkv = h * (cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"]) * head
    return L * (qkv + h * h + h * 2 * i + i * h) + cfg["vocab_size"] * h


def edgesmith_bundle(hf: Path, quant: str, target: str) -> Path:
    """The bundle of `hf` for `target`, from the package's bundle cache."""
    return cached_bundle(str(hf), quant, target)


MATMUL = {"edgesmith": r"q4_matmul|matmul", "llama.cpp": r"gemv|gemm|vec_dot|mul_mat|quantize_mat|quantize_row_q8"}
KERNEL_LIB = {"edgesmith": "model.so", "llama.cpp": "libggml-cpu.so"}


def _edgesmith_command(hf: Path, quant: str, flags: str, args):
    """(argv for a prompt `ids` and n generated tokens, environment) of `runner generate` on a bundle for `flags`."""
    bundle = edgesmith_bundle(hf, quant, flags)

    def argv(n: int, ids: str) -> list[str]:
        return [str(bundle / "bin" / "runner"), "generate", str(bundle), "--tokens", ids, "-n", str(n),
                "--threads", "1", "--no-verify"]
    return argv, None


def _llama_command(hf: Path, flags: str, cpu: str, plugin: Path, args):
    """The same for llama_decode built for -march=`flags` (cross-built and the GGUF made once)."""
    llama_dir = args.cache / "llama.cpp-arm"
    src = arm_llama.source(llama_dir)
    run_dir = arm_llama.build(src, llama_dir, flags, BASE_MARCH, jobs=args.jobs)
    # The libraries carry their build folder as RUNPATH; LD_LIBRARY_PATH is searched first, so this
    # folder's ggml-cpu (this -march) is the one loaded: run_counted's caller checks it.
    env = {"LD_LIBRARY_PATH": str(run_dir)}
    driver = run_dir / "llama_decode"
    model = arm_llama.gguf(hf, src, llama_dir, lambda a: arm_qemu.run_counted([str(driver), *a], plugin, cpu, env))

    def argv(n: int, ids: str) -> list[str]:
        return [str(driver), "run", str(model), "--tokens", ids, "-n", str(n)]
    return argv, env


def _only_from(counts: dict, folder: Path) -> None:
    """llama.cpp's libraries counted must be the ones in `folder` (not another -march's build)."""
    stray = {p for p, _ in counts if Path(p).name.startswith(("libggml", "libllama"))
             and Path(p).parent != folder.resolve()}
    if stray:
        raise arm_qemu.QemuError(f"llama_decode ran libraries from outside {folder}: {sorted(stray)}")


def dynamic_counts(args) -> list[dict]:
    from bench.peer_model import write_checkpoint
    from bench.peers import ensure

    # peer_model writes a SentencePiece tokenizer.model (llama.cpp's converter insists on one).
    ensure("sentencepiece", ["sentencepiece"], True)
    ensure("google.protobuf", ["protobuf"], True, note="(sentencepiece's model proto)")
    hf = write_checkpoint(args.cache / f"phi3-mini-4k-l{args.layers}", layers=args.layers)
    cfg = json.loads((hf / "config.json").read_text())
    plugin = arm_qemu.build_plugin(args.cache / "arm-cost")
    def prompt(length: int) -> str:
        return ",".join(str(t) for t in [1] + [300 + (17 * i) % 30000 for i in range(length - 1)])
    ids, long_ids = prompt(args.prompt), prompt(args.prefill)
    n1, n2 = 2, 2 + args.steps
    # (engine, quantization, flags, qemu -cpu: a CPU of that ISA, so nothing beyond it can run)
    configs = [("edgesmith", "q4f16", "arm64-linux", "cortex-a72"),
               ("edgesmith", "q4f16i8", "arm64-linux", "cortex-a72"),
               ("edgesmith", "q4f16i8", "arm64-linux-dotprod", "cortex-a76"),
               # i8mm's smmla prefill GEMM: qemu's "max" (its only CPU with i8mm); decode as dotprod's
               ("edgesmith", "q4f16i8", "arm64-linux-i8mm", "max")]
    if not args.no_llama:  # llama.cpp's repack picks its i8mm GEMM (smmla) where the CPU has i8mm: qemu's max
        configs += [("llama.cpp", "Q4_0", BASE_MARCH, "cortex-a72"), ("llama.cpp", "Q4_0", DOTPROD_MARCH, "cortex-a76"),
                    ("llama.cpp", "Q4_0", I8MM_MARCH, "max")]
    if args.only:
        configs = [c for c in configs if f"{c[0]}:{c[1]}:{c[2]}" in args.only.split(",")]
    results = []
    for engine, quant, flags, cpu in configs:
        res = {"engine": engine, "quant": quant, "flags": flags, "qemu_cpu": cpu,
               "weights_per_token": weights_per_token(cfg)}
        results.append(res)
        runs = {}
        try:
            if engine == "edgesmith":
                argv, env = _edgesmith_command(hf, quant, flags, args)
            else:
                argv, env = _llama_command(hf, flags, cpu, plugin, args)
            # (prompt, generated): the decode steps at the short prompt, and the long prompt's prefill
            for key in ((args.prompt, n1), (args.prompt, n2), (args.prefill, n1)):
                t = time.perf_counter()
                out, counts = arm_qemu.run_counted(argv(key[1], long_ids if key[0] == args.prefill else ids),
                                                   plugin, cpu, env)
                if env:
                    _only_from(counts, Path(env["LD_LIBRARY_PATH"]))
                runs[key] = arm_qemu.symbolize(counts)
                print(f"{engine} {quant} {flags}: prompt {key[0]}, -n {key[1]} under qemu -cpu {cpu} in "
                      f"{time.perf_counter() - t:.0f} s", file=sys.stderr)
                res[f"output_p{key[0]}_n{key[1]}"] = out.strip().splitlines()[-1][:200]
        except (arm_llama.LlamaError, arm_qemu.QemuError, subprocess.TimeoutExpired) as e:
            res["error"] = str(e)
            print(f"{engine} {flags}: {e}", file=sys.stderr)
            continue
        tok = arm_qemu.per_token(runs[args.prompt, n1], runs[args.prompt, n2], n2 - n1)
        matmul = sum(v for (_, sym), v in tok.items() if re.search(MATMUL[engine], sym))
        # Prefill per prompt token: the long prompt's run less the short one's (same tokens generated)
        # over the extra prompt tokens: what one more prompt token costs in a prefill of this length.
        pre = arm_qemu.per_token(runs[args.prompt, n1], runs[args.prefill, n1], args.prefill - args.prompt)
        res.update(prefill_insns_per_token=sum(pre.values()),
                   prefill_matmul_insns_per_token=sum(v for (_, sym), v in pre.items() if re.search(MATMUL[engine], sym)),
                   prefill_top=[{"file": f, "symbol": sym, "insns": v}
                                for (f, sym), v in sorted(pre.items(), key=lambda kv: -kv[1])[:8]])
        top = sorted(tok.items(), key=lambda kv: -kv[1])[:8]
        res.update(insns_per_token=sum(tok.values()), matmul_insns=matmul,
                   kernel_lib_insns=sum(v for (name, _), v in tok.items() if name.startswith(KERNEL_LIB[engine])),
                   matmul_insns_per_block=matmul / (res["weights_per_token"] / BLOCK),
                   top=[{"file": f, "symbol": sym, "insns": v} for (f, sym), v in top])
    return results


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", default=",".join(CORES), help=f"of {', '.join(CORES)}")
    ap.add_argument("--n", type=int, default=9216, help="GEMV rows (Phi-3-mini's qkv: 9216)")
    ap.add_argument("--k", type=int, default=3072, help="GEMV reduction (Phi-3-mini's hidden: 3072)")
    ap.add_argument("--layers", type=int, default=2, help="layers of the model counted under qemu")
    ap.add_argument("-p", "--prompt", type=int, default=8, help="prompt tokens before the counted decode steps")
    ap.add_argument("--steps", type=int, default=4, help="decode steps the per-token count is taken over")
    ap.add_argument("--prefill", type=int, default=64, help="the long prompt: prefill per prompt token is taken "
                    "between it and -p")
    ap.add_argument("--no-qemu", action="store_true", help="only the static (llvm-mca) part")
    ap.add_argument("--no-static", action="store_true", help="only the qemu part")
    ap.add_argument("--no-llama", action="store_true", help="only our kernels")
    ap.add_argument("--only", default="", help="qemu: only these ENGINE:QUANT:FLAGS, comma-separated "
                    f"(e.g. edgesmith:q4f16i8:arm64-linux, llama.cpp:Q4_0:{I8MM_MARCH})")
    ap.add_argument("--jobs", type=int, default=2, help="parallel compile jobs for the llama.cpp build")
    ap.add_argument("--cache", type=Path, default=HERE / "models", help="downloads, builds, models (not in git)")
    ap.add_argument("--out", type=Path, default=HERE / "out" / "arm_cost.json")
    args = ap.parse_args()
    unknown = [c for c in args.cores.split(",") if c not in CORES]
    if unknown:
        raise SystemExit(f"unknown core {unknown[0]!r}; known: {', '.join(CORES)}")
    cores = [CORES[c] for c in args.cores.split(",")]
    args.cache.mkdir(parents=True, exist_ok=True)

    static = [] if args.no_static else static_costs(args, cores)
    dynamic = [] if args.no_qemu else dynamic_counts(args)
    date = time.strftime("%Y-%m-%d")
    print(f"\n{date}; decode GEMV k={args.k} -> n={args.n}, 32-weight blocks of {BLOCK_BYTES} bytes; "
          f"llvm-mca {arm_asm.mca_version(arm_asm.find_llvm_mca())}, steady state, all loads hit L1\n")
    if static:
        print(static_table(static, cores))
        print("\n" + detail_table(static, cores))
        print("\n" + bound_table(static, cores))
    loops_dir = args.out.with_suffix("")  # the hot loops as llvm-mca read them, to look at
    loops_dir.mkdir(parents=True, exist_ok=True)
    for r in static:
        if "loop" in r:
            (loops_dir / f"{r['kernel']}.s").write_text("\n".join(r["loop"]) + "\n")
    if dynamic:
        print(f"\nqemu-aarch64 ({_qemu_version()}) TCG plugin: instructions per decoded token, one thread, "
              f"random Phi-3-mini shape, {args.layers} layers, prompt {args.prompt}, over {args.steps} decode steps\n")
        print(dynamic_table(dynamic))
        print(f"\nthe same, prefill: instructions per prompt token between prompts of {args.prompt} and "
              f"{args.prefill} tokens (both then 2 generated)\n")
        print(prefill_table(dynamic))
    write_json(args.out, {"date": date, "command": " ".join(sys.argv), "n": args.n, "k": args.k,
                          "block_bytes": BLOCK_BYTES, "cores": [asdict(c) for c in cores], "static": static,
                          "dynamic": dynamic, "llama_cpp_python": arm_llama.VERSION})
    print(f"\nwrote {args.out}", file=sys.stderr)


def _qemu_version() -> str:
    try:
        return subprocess.run(["qemu-aarch64", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    except OSError:
        return "?"


def static_table(rows: list[dict], cores: list[Core]) -> str:
    out = []
    for r in rows:
        row = {"kernel": f"{r['engine']} {r.get('label', r['kernel'])}", "flags": r.get("flags", "")}
        if "error" in r:
            row["loop"] = r["error"][:120]
            out.append(row)
            continue
        row["loop"] = f"{r['loop_label']}: {r['loop_instructions']} insns / {r['weights_per_iteration']} w"
        if r["same_loop_as"]:
            row["loop"] += f" (same loop as {r['same_loop_as']})"
        row["ipb"] = r["instructions_per_block"]
        for c in cores:
            cc = r["cores"].get(c.key)
            row[c.key] = f"{cc['cycles_per_block']:.1f} ({cc['bound_by']})" if cc else "- (lacks it)"
        out.append(row)
    cols = [("kernel", "kernel"), ("flags", "flags"), ("loop", "hot loop"), ("ipb", "insns / block")]
    cols += [(c.key, f"{c.name} cycles / block") for c in cores]
    return table(out, cols)


def detail_table(rows: list[dict], cores: list[Core]) -> str:
    out = []
    for r in rows:
        if "error" in r or r["same_loop_as"]:
            continue
        for c in (c for c in cores if c.key in r["cores"]):
            cc = r["cores"][c.key]
            out.append({"kernel": f"{r['engine']} {r['label']} ({r['flags']})", "core": f"{c.name} ({c.mcpu})",
                        "cpb": cc["cycles_per_block"], "upb": cc["uops_per_block"], "ipc": cc["ipc"],
                        "rt": cc["block_rthroughput_per_block"],
                        "busy": f"{cc['busiest_resource']} {cc['busiest_pressure_per_block']:.2f}",
                        "row": cc["cycles_per_row"]})
    return "llvm-mca per 32-weight block:\n" + table(out, [
        ("kernel", "kernel"), ("core", "core (-mcpu)"), ("cpb", "cycles"), ("upb", "uops"), ("ipc", "IPC"),
        ("rt", "block RThroughput"), ("busy", "busiest unit, cycles"), ("row", "cycles / row (loop only)")])


def bound_table(rows: list[dict], cores: list[Core]) -> str:
    out = []
    for r in rows:
        if "error" in r or r.get("prefill"):  # a prefill GEMM reuses each weight over its tokens
            continue
        row = {"kernel": f"{r['engine']} {r['label']} ({r['flags']})"}
        for c in cores:
            cc = r["cores"][c.key]
            row[c.key] = f"{cc['cluster_gbs']:.1f} GB/s: {cc['verdict']}"
        out.append(row)
    cols = [("kernel", "kernel")] + [(c.key, f"{c.name} x{c.cluster} @ {c.ghz} GHz ({c.bw_gbs[0]:.0f}-{c.bw_gbs[1]:.0f} GB/s)")
                                     for c in cores]
    return "weights the cluster could stream at llvm-mca's pace, against the memory's bandwidth:\n" + table(out, cols)


def _qemu_rows(results: list[dict], fill) -> list[dict]:
    """One row per engine run: its name, flags and qemu CPU, then `fill(r)`'s columns (or the error)."""
    out = []
    for r in results:
        row = {"engine": f"{r['engine']} {r['quant']}", "flags": r["flags"], "cpu": r["qemu_cpu"]}
        row.update({"top": r["error"][:160]} if "error" in r else fill(r))
        out.append(row)
    return out


def _top(symbols: list[dict]) -> str:
    return ", ".join(f"{t['symbol'][:40]} {t['insns'] / 1e6:.1f}M" for t in symbols[:3])


def dynamic_table(results: list[dict]) -> str:
    out = _qemu_rows(results, lambda r: dict(total=r["insns_per_token"] / 1e6, lib=r["kernel_lib_insns"] / 1e6,
                                             mm=r["matmul_insns"] / 1e6, ipb=r["matmul_insns_per_block"],
                                             top=_top(r["top"])))
    return table(out, [("engine", "engine"), ("flags", "flags"), ("cpu", "qemu -cpu"), ("total", "M insns / token"),
                       ("lib", "M in kernel library"), ("mm", "M in matmul"), ("ipb", "matmul insns / 32 w"),
                       ("top", "top symbols")])


def prefill_table(results: list[dict]) -> str:
    out = _qemu_rows(results, lambda r: dict(total=r["prefill_insns_per_token"] / 1e6,
                                             mm=r["prefill_matmul_insns_per_token"] / 1e6, top=_top(r["prefill_top"])))
    return table(out, [("engine", "engine"), ("flags", "flags"), ("cpu", "qemu -cpu"),
                       ("total", "M insns / prompt token"), ("mm", "M in matmul"), ("top", "top symbols")])


if __name__ == "__main__":
    main()
