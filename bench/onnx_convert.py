"""Converting an ONNX Runtime GenAI int4 folder vs the Hugging Face folder it was built from.

    python bench/onnx_convert.py [--layers 8] [--rebuild]

One random Phi-3-mini-4k-shaped checkpoint (transformers' own init at bench/peer_model.py's
public dimensions, float16, `layers` layers, a WordLevel tokenizer.json: ids only), ONNX Runtime GenAI's builder on it (`-p int4 -e cpu`: MatMulNBits block 32, float32
scales), then `edgesmith compile` of each, in a child process so its peak RSS is its own:
  onnx q4f32   the ONNX folder; int4 codes and scales copied bit for bit (the default quant there)
  hf q4f32     the HF folder, quantized by edgesmith into the same format
  hf q4f16     the HF folder at the HF default
Reported per source: the conversion alone (trace the model, stream every tensor into the
tensor cache: what differs between the two sources), in its own child, its seconds and peak RSS;
then the whole `edgesmith compile` (lowering and linking included), wall seconds and peak RSS.
The builder's own time and peak RSS are reported beside them. With --agreement, each int4
scheme compiled from the ONNX folder (embedding and lm_head in float: --float-embedding) is then
run teacher-forced beside ONNX Runtime GenAI on the same folder: mean KL and top-1 agreement of
the next-token distributions (ONNX Runtime multiplies with int8 activations, accuracy level 4).
Peak RSS is wait4's ru_maxrss of
a child started by a parent that never holds a model (Linux carries a parent's RSS at fork into
the child's maximum), so the checkpoint is written in a child too. Prints a table, writes
bench/out/onnx_convert.json. Needs onnxruntime-genai, onnx-ir, onnxscript (the test extra).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/NAME.py`: import siblings as bench.NAME from the
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # repo root; bench/ itself never on sys.path
from bench.common import table, write_json  # noqa: E402
from bench.peer_model import MINI_4K, write_weights  # noqa: E402

MODELS = Path(__file__).parent / "models"


def run(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of one child process."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{' '.join(cmd[:4])} ... failed:\n{err.read()[-3000:]}")
        return wall, usage.ru_maxrss / 1024, out.read()


def write_checkpoint(out: Path, layers: int, seed: int = 0) -> Path:
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    from tokenizers import Tokenizer, models

    write_weights(out, layers, seed)
    # The builder wants a tokenizer it can load; conversion never looks at it.
    vocab = {f"w{i}": i for i in range(MINI_4K["vocab_size"])}
    Tokenizer(models.WordLevel(vocab, unk_token="w0")).save(str(out / "tokenizer.json"))
    return out


def convert_child(model: str, quant: str, out: str) -> None:
    """In a child: the conversion step of compile_bundle alone; prints its seconds and peak RSS."""
    import resource

    from edgesmith.compiler.build import build_model
    from edgesmith.compiler.inputs.checkpoint import open_checkpoint, validate
    from edgesmith.compiler.convert import convert_params
    from edgesmith.compiler.quantization.registry import get_quantization
    from edgesmith.targets import presets
    from edgesmith.targets.tvm_api import dump_tensor_cache, tvm

    t = time.perf_counter()
    ckpt = open_checkpoint(model)
    validate(ckpt)
    q = get_quantization(quant)
    _, params = build_model(ckpt.config, q, tvm.target.Target(presets.get_preset("host").tvm_target()))
    Path(out).mkdir(parents=True)
    dump_tensor_cache(convert_params(ckpt, params, q), out)
    print(json.dumps({"convert_s": time.perf_counter() - t,
                      "convert_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    if sys.argv[1:2] == ["--convert-child"]:
        return convert_child(*sys.argv[2:5])
    if sys.argv[1:2] == ["--write-checkpoint"]:
        write_checkpoint(Path(sys.argv[2]), int(sys.argv[3]))
        return None
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--rebuild", action="store_true", help="write the checkpoint and the ONNX folder again")
    ap.add_argument("--agreement", type=int, default=0, metavar="POSITIONS",
                    help="also compare q4f32/q4f32i8/q4f16/q4f16i8 with ONNX Runtime GenAI over this many positions")
    ap.add_argument("--out", type=Path, default=Path("bench/out/onnx_convert.json"))
    args = ap.parse_args()

    hf = MODELS / f"phi3-mini-4k-l{args.layers}"
    onnx_dir = MODELS / f"phi3-mini-4k-l{args.layers}-ort-int4"
    if args.rebuild:
        shutil.rmtree(hf, ignore_errors=True)
        shutil.rmtree(onnx_dir, ignore_errors=True)
    run([sys.executable, __file__, "--write-checkpoint", str(hf), str(args.layers)])
    builder = None
    if not (onnx_dir / "genai_config.json").is_file():
        wall, rss, _ = run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(onnx_dir),
                         "-p", "int4", "-e", "cpu", "-c", str(MODELS / "ort-cache")])
        builder = {"wall_s": round(wall, 1), "peak_rss_mb": round(rss), "date": time.strftime("%Y-%m-%d")}
        (onnx_dir / "builder-cost.json").write_text(json.dumps(builder))
    elif (onnx_dir / "builder-cost.json").is_file():  # measured when the folder was built
        builder = json.loads((onnx_dir / "builder-cost.json").read_text())
    if builder:
        print(f"ONNX Runtime GenAI builder: {builder['wall_s']} s, peak RSS {builder['peak_rss_mb']} MiB", file=sys.stderr)

    from edgesmith.compiler.bundle.folder import read_manifest

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgesmith-onnx-convert-") as tmp:
        for source, folder, quant in (("onnx", onnx_dir, "q4f32"), ("hf", hf, "q4f32"), ("hf", hf, "q4f16")):
            out = Path(tmp) / f"{source}-{quant}"
            _, _, text = run([sys.executable, __file__, "--convert-child", str(folder), quant, str(out / "params")])
            conv = json.loads(text.strip().splitlines()[-1])
            shutil.rmtree(out)
            wall, rss, _ = run([sys.executable, "-m", "edgesmith", "compile", str(folder), "--quant", quant, "-q", "-o", str(out)])
            m = read_manifest(out)
            rows.append({"source": source, "quant": quant, "convert_s": round(conv["convert_s"], 1),
                         "convert_rss_mb": round(conv["convert_rss_mb"]), "compile_wall_s": round(wall, 1),
                         "compile_rss_mb": round(rss), "weights_mb": round(m.weight_bytes / 2**20),
                         "int4_kept": (m.model.input or {}).get("int4_kept", "")})
            shutil.rmtree(out)
            print(f"{rows[-1]}", file=sys.stderr)
    print(table(rows, [(k, k) for k in rows[0]]))
    data_mb = (onnx_dir / "model.onnx.data").stat().st_size / 2**20
    hf_mb = sum(p.stat().st_size for p in hf.glob("*.safetensors")) / 2**20
    print(f"\n{args.layers} layers: model.onnx.data {data_mb:.0f} MiB, HF safetensors {hf_mb:.0f} MiB (float16)")
    agree = agreement(onnx_dir, args.agreement) if args.agreement else None
    write_json(args.out, {"date": time.strftime("%Y-%m-%d"), "layers": args.layers, "onnx_data_mb": round(data_mb),
                          "hf_safetensors_mb": round(hf_mb), "builder": builder, "rows": rows, "agreement": agree})


def agreement(onnx_dir: Path, positions: int) -> list[dict]:
    import numpy as np
    import onnxruntime_genai as og

    from edgesmith.compiler.build import compile_bundle
    from edgesmith.runtime.evaluate import compare_logits, teacher_forced_logits

    ids = np.random.default_rng(0).integers(0, 32000, positions).tolist()
    model = og.Model(str(onnx_dir))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=positions + 1)
    gen = og.Generator(model, params)
    ref = []
    for tok in ids:
        gen.append_tokens([tok])
        ref.append(np.array(gen.get_output("logits"), dtype=np.float64).reshape(-1))
    del gen, model
    ref = np.stack(ref)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgesmith-onnx-agree-") as tmp:
        for quant in ("q4f32", "q4f32i8", "q4f16", "q4f16i8"):
            bundle = compile_bundle(onnx_dir, quant, "host", Path(tmp) / quant, quantize_embedding=False)
            r = compare_logits(ref, teacher_forced_logits(bundle, ids))
            rows.append({"quant": quant, "mean_kl": r["mean_kl"], "top1": r["top1_agreement"], "max_abs_diff": r["max_abs_diff"]})
            print(rows[-1], file=sys.stderr)
    print(f"\nvs ONNX Runtime GenAI, {positions} teacher-forced positions (embedding and lm_head in float):")
    print(table(rows, [(k, k) for k in rows[0]]))
    return rows


if __name__ == "__main__":
    main()
