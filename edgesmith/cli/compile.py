"""`edgesmith compile`: a checkpoint (folder, ONNX, random:) -> a bundle folder, and `--eval`."""
from __future__ import annotations

from pathlib import Path

from edgesmith.cli.args import DEVICES_HELP, check_writable, out_option


def cmd_compile(args) -> int:
    from edgesmith.compiler.inputs.checkpoint import default_quant
    from edgesmith.compiler.quantization.registry import get_quantization
    from edgesmith.targets.presets import get_preset

    progress_note = None
    if args.quant is None:
        get_preset(args.target)  # an unknown target: said before the checkpoint is opened
        args.quant, why = default_quant(args.model, args.target)
        float_twin = get_quantization(args.quant).variant(int8_activations=False)
        progress_note = f"quantization {args.quant}: the default for target {args.target} ({why})" + (
            f"; --quant {float_twin.name} for exact float activations" if float_twin.name != args.quant else "")
    out = args.out or Path("dist") / _bundle_name(args.model, args.quant, args.target)
    _check_compile_args(args.model, args.quant, args.target, out, args.tokenizer)
    check_writable(out, "-o")
    from edgesmith.compiler.build import compile_bundle
    from edgesmith.cli.progress import ConsoleProgress

    tuning, tuning_source = None, ""
    if args.tuning:
        from edgesmith.runtime.tune.apply import resolve

        tuning, tuning_source = resolve(args.tuning, args.target, args.device, args.devices)
    elif args.device:
        from edgesmith.errors import EdgesmithError
        raise EdgesmithError("compile --device only names the device of --tuning auto or the one to check a "
                             "--tuning FILE against; add --tuning")
    progress = ConsoleProgress(quiet=args.quiet)
    if progress_note:
        progress.step(progress_note)
    compile_bundle(args.model, args.quant, args.target, out,
                   quantize_embedding=_embedding_choice(args), dump_ir=args.dump_ir, progress=progress,
                   context=args.context, kv_dtype=args.kv_dtype, tuning=tuning, tuning_source=tuning_source,
                   tokenizer=args.tokenizer, cuda_graph=args.cuda_graph)
    progress.done(f"bundle written to {out} ({_kv_summary(out)})")
    if args.eval:
        from edgesmith.runtime.evaluate import evaluate_bundle

        from edgesmith.compiler.bundle.folder import read_manifest
        from edgesmith.runtime.evaluate import guidance

        report = evaluate_bundle(out, args.model, progress=progress)
        print(_format_eval(report))
        manifest = read_manifest(out)
        print(f"  {guidance(report, manifest.quant, manifest.model.source)}")
    return 0


def _embedding_choice(args) -> bool | None:
    """--float-embedding: both in float; --quantize-embedding: both int4; neither: the source's choice
    (int4, except what an int4 ONNX export stores in float)."""
    return False if args.float_embedding else True if args.quantize_embedding else None


def _check_compile_args(model: str, quant: str, target: str, out: Path, tokenizer: str | None = None) -> None:
    """Names against the registries, the checkpoint's config and the output path: before TVM is
    imported, so a typo answers at once."""
    from edgesmith.compiler.inputs.checkpoint import open_checkpoint
    from edgesmith.compiler.quantization.registry import get_quantization
    from edgesmith.errors import EdgesmithError
    from edgesmith.targets.presets import get_preset

    get_quantization(quant)
    get_preset(target)
    ckpt = open_checkpoint(model)
    if tokenizer:
        from edgesmith.compiler.inputs.tokenizer_files import from_spec

        from_spec(tokenizer, ckpt.config)
    if out.exists() and not out.is_dir():
        raise EdgesmithError(f"output {out} is a file, not a folder; give -o a folder name for the bundle "
                             "(it is created), or remove the file")


def _kv_summary(bundle: Path) -> str:
    from edgesmith.compiler.bundle.folder import read_manifest

    kv = read_manifest(bundle).kv_cache
    window = f", sliding window {kv.sliding_window}" if kv.sliding_window else ""
    return (f"context {kv.max_total_seq_len} tokens, KV cache {kv.dtype} "
            f"{kv.bytes_per_token / 1024:.1f} KiB/token{window}")


def _bundle_name(model: str, quant: str, target: str) -> str:
    path = Path(model)
    base = model.split("random:", 1)[1] if model.startswith("random:") else (path.parent if path.suffix == ".onnx" else path).name
    return f"{base.replace(':', '-').replace('=', '')}-{quant}-{target}"


def _format_eval(r: dict) -> str:
    return (f"accuracy vs q0f32 over {r['positions']} positions: top-1 agreement {100 * r['top1_agreement']:.1f}%, "
            f"mean KL {r['mean_kl']:.5f} nats, max |logit diff| {r['max_abs_diff']:.4f}")



def add_parser(sub) -> None:
    # The registries (TVM-free) name the presets and quantizations.
    from edgesmith.compiler.models import RANDOM_PRESETS, supported
    from edgesmith.compiler.quantization.registry import QUANTIZATIONS

    c = sub.add_parser("compile", help="checkpoint folder or random:<preset> -> bundle folder")
    c.add_argument("model", help=f"a Hugging Face folder (config.json, *.safetensors; architectures: {supported()}), "
                   "an ONNX Runtime GenAI folder (genai_config.json, model.onnx) or random:<preset>[:layers=N][:seed=S] "
                   f"(presets: {', '.join(RANDOM_PRESETS)})")
    c.add_argument("--quant", help=f"{', '.join(QUANTIZATIONS)} (`edgesmith quants` says what each is); default: "
                   "q4f16i8 (int8 activations) where the target has int8 dot products, q4f16 elsewhere, and an "
                   "int4 ONNX model keeps its own scale dtype (q4f32 or q4f32i8); `edgesmith targets` shows each "
                   "target's default")
    c.add_argument("--target", default="host", help="target preset (see `edgesmith targets`); default host")
    out_option(c, "bundle folder to write (default dist/<model>-<quant>-<target>)", old="--output")
    ends = c.add_mutually_exclusive_group()
    ends.add_argument("--float-embedding", action="store_true", help="keep the embedding and lm_head in float")
    ends.add_argument("--quantize-embedding", action="store_true", help="int4 embedding and lm_head even where "
                      "an int4 ONNX export stores them in float (smaller; its logits then differ from the source's)")
    c.add_argument("--tokenizer", metavar="phi3|FILE", help="the tokenizer the bundle carries instead of the "
                   "checkpoint's: phi3 (the built Phi-3 tokenizer, where the vocabulary is Phi-3's), a tokenizer.json, "
                   "a SentencePiece tokenizer.model (converted) or a folder holding one (default: the checkpoint's "
                   "tokenizer.json, else its tokenizer.model converted)")
    c.add_argument("--eval", action="store_true", help="also report top-1 agreement and KL against q0f32")
    c.add_argument("--dump-ir", type=Path, metavar="DIR", help="write the IR after each pipeline phase")
    c.add_argument("--cuda-graph", action="store_true", help="CUDA targets: replay the kernels between the KV "
                   "cache's calls as CUDA graphs (fewer launches a token; not yet run on a GPU: off by default)")
    c.add_argument("--context", type=int, metavar="N", help="tokens the KV cache holds, up to the model's "
                   "max_position_embeddings (default: that, at most 4096)")
    c.add_argument("--kv-dtype", choices=["float16", "float32"], help="KV cache dtype (default float16 on GPUs "
                   "and ARM with fp16, float32 elsewhere)")
    c.add_argument("--tuning", metavar="FILE|auto", help="apply a tuning record from `edgesmith tune` (a file, or "
                   "auto: the cache's record for --device); a record from another device or target is refused")
    c.add_argument("--device", help="with --tuning: the device the bundle is for (its fingerprint is checked)")
    c.add_argument("--devices", type=Path, help=DEVICES_HELP)
    c.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    c.set_defaults(func=cmd_compile)
