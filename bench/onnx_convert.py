"""Converting an ONNX Runtime GenAI int4 folder vs the Hugging Face folder it was built from.

    python bench/onnx_convert.py [--layers 8] [--rebuild]

One random Phi-3-mini-4k-shaped checkpoint (transformers' own init at bench/peer_model.py's
public dimensions, float16, `layers` layers, a WordLevel tokenizer.json: ids only), ONNX Runtime GenAI's builder on it (`-p int4 -e cpu`: MatMulNBits block 32, float32
scales), then `edgesmith compile` of each, in a child process so its peak RSS is its own:
  onnx q4f32   the ONNX folder; int4 codes and scales copied bit for bit (the default quant there)
  hf q4f32     the HF folder, quantized by edgesmith into the same format
  hf q4f16     the HF folder at the HF default
Reported: wall time, the manifest's convert and compile seconds, peak RSS (wait4's ru_maxrss),
weights written. The builder's own time and peak RSS are reported beside them. Prints a table,
writes bench/out/onnx_convert.json. Needs onnxruntime-genai, onnx-ir, onnxscript (the test extra).
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

sys.path.insert(0, str(Path(__file__).parent))
from common import table, write_json  # noqa: E402
from peer_model import MINI_4K  # noqa: E402

MODELS = Path(__file__).parent / "models"


def run(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one child process."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    err = p.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed:\n{err[-3000:]}")
    return wall, usage.ru_maxrss / 1024


def write_checkpoint(out: Path, layers: int, seed: int = 0) -> Path:
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    import torch
    from tokenizers import Tokenizer, models
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(seed)
    model = Phi3ForCausalLM(Phi3Config(num_hidden_layers=layers, **MINI_4K)).to(torch.float16).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    del model
    # The builder wants a tokenizer it can load; conversion never looks at it.
    vocab = {f"w{i}": i for i in range(MINI_4K["vocab_size"])}
    Tokenizer(models.WordLevel(vocab, unk_token="w0")).save(str(out / "tokenizer.json"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--rebuild", action="store_true", help="write the checkpoint and the ONNX folder again")
    ap.add_argument("--out", type=Path, default=Path("bench/out/onnx_convert.json"))
    args = ap.parse_args()

    hf = MODELS / f"phi3-mini-4k-l{args.layers}"
    onnx_dir = MODELS / f"phi3-mini-4k-l{args.layers}-ort-int4"
    if args.rebuild:
        shutil.rmtree(hf, ignore_errors=True)
        shutil.rmtree(onnx_dir, ignore_errors=True)
    write_checkpoint(hf, layers=args.layers)
    builder = None
    if not (onnx_dir / "genai_config.json").is_file():
        wall, rss = run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(onnx_dir),
                         "-p", "int4", "-e", "cpu", "-c", str(MODELS / "ort-cache")])
        builder = {"wall_s": round(wall, 1), "peak_rss_mb": round(rss)}
        print(f"ONNX Runtime GenAI builder: {wall:.1f} s, peak RSS {rss:.0f} MiB", file=sys.stderr)

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgesmith-onnx-convert-") as tmp:
        for source, folder, quant in (("onnx", onnx_dir, "q4f32"), ("hf", hf, "q4f32"), ("hf", hf, "q4f16")):
            out = Path(tmp) / f"{source}-{quant}"
            wall, rss = run([sys.executable, "-m", "edgesmith", "compile", str(folder), "--quant", quant, "-q", "-o", str(out)])
            m = json.loads((out / "manifest.json").read_text())
            rows.append({"source": source, "quant": quant, "wall_s": round(wall, 1), "convert_s": m["build"]["convert_s"],
                         "compile_s": m["build"]["compile_s"], "peak_rss_mb": round(rss),
                         "weights_mb": round(m["weight_bytes"] / 2**20),
                         "int4_kept": m["model"]["input"].get("int4_kept", "")})
            shutil.rmtree(out)
            print(f"{source} {quant}: {wall:.1f} s, peak RSS {rss:.0f} MiB", file=sys.stderr)
    print(table(rows, [(k, k) for k in rows[0]]))
    data_mb = (onnx_dir / "model.onnx.data").stat().st_size / 2**20
    hf_mb = sum(p.stat().st_size for p in hf.glob("*.safetensors")) / 2**20
    print(f"\n{args.layers} layers: model.onnx.data {data_mb:.0f} MiB, HF safetensors {hf_mb:.0f} MiB (float16)")
    write_json(args.out, {"date": time.strftime("%Y-%m-%d"), "layers": args.layers, "onnx_data_mb": round(data_mb),
                          "hf_safetensors_mb": round(hf_mb), "builder": builder, "rows": rows})


if __name__ == "__main__":
    main()
