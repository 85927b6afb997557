"""The command line as a user meets it: compile random:tiny, run it, inspect it; and every bad
input gives exit != 0, one line naming the problem, no traceback, and nothing half-written."""
import json
import os
import shutil
import subprocess
import sys

import pytest

import hf_tiny


def edgesmith(*args, cwd=None, check=False):
    p = subprocess.run([sys.executable, "-m", "edgesmith", *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"edgesmith {args} failed ({p.returncode}):\n{p.stderr}")
    return p


def assert_one_line_error(p, *needles):
    assert p.returncode != 0
    err = p.stderr.strip()
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("edgesmith: error:")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


def no_partial_output(parent, name):
    leftovers = [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]
    return not (parent / name).exists() and not leftovers


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "tiny"
    edgesmith("compile", "random:tiny", "--quant", "q4f16", "-o", out, check=True)
    return out


def test_compile_run_inspect_end_to_end(tiny_bundle):
    assert (tiny_bundle / "manifest.json").is_file()
    runner = edgesmith("run", tiny_bundle, "--tokens", "1,2,3", "-n", "6", "--json", check=True)
    python = edgesmith("run", tiny_bundle, "--tokens", "1,2,3", "-n", "6", "--json", "--engine", "python", check=True)
    a, b = json.loads(runner.stdout), json.loads(python.stdout)
    assert len(a["output_ids"]) == 6 and a["output_ids"] == b["output_ids"]
    assert a["decode_tok_s"] > 0 and a["prefill_tok_s"] > 0
    streamed = edgesmith("run", tiny_bundle, "--tokens", "1,2,3", "-n", "6", check=True)
    assert streamed.stdout.split() == [str(t) for t in a["output_ids"]]
    info = edgesmith("inspect", tiny_bundle, check=True).stdout
    assert "q4f16" in info and "random:tiny" in info and "match their sha256" in info
    assert json.loads(edgesmith("inspect", tiny_bundle, "--json", check=True).stdout)["quant"] == "q4f16"


def test_same_seed_gives_the_same_bundle(tiny_bundle, tmp_path):
    """... the same weights whatever the KV cache's dtype: `--kv-dtype float16` on the command line
    (README) gives a float16 cache (the host's default is float32) and the same greedy tokens."""
    again = tmp_path / "again"
    edgesmith("compile", "random:tiny", "--quant", "q4f16", "-o", again, "-q", "--kv-dtype", "float16", check=True)
    m1 = json.loads((tiny_bundle / "manifest.json").read_text())
    m2 = json.loads((again / "manifest.json").read_text())
    shards = [k for k in m1["files"] if k.startswith("params/")]
    assert shards and all(m1["files"][k]["sha256"] == m2["files"][k]["sha256"] for k in shards)
    assert (m1["kv_cache"]["dtype"], m2["kv_cache"]["dtype"]) == ("float32", "float16")
    assert "float16" in edgesmith("inspect", again, check=True).stdout
    runs = [json.loads(edgesmith("run", b, "--tokens", "1,2,3", "-n", "6", "--json", check=True).stdout)["output_ids"]
            for b in (tiny_bundle, again)]
    assert runs[0] == runs[1]  # random:tiny: float16 KV keeps top-1 (README: 100% over 61 positions)


def test_text_prompt_with_tokenizer(tiny_ckpt_dir, tmp_path):
    out = tmp_path / "b"
    edgesmith("compile", tiny_ckpt_dir("mini-4k"), "--quant", "q4f32", "-o", out, "-q", check=True)
    p = edgesmith("run", out, "--prompt", "the water is hot", "-n", "5", "--json", "--ignore-eos", check=True)
    r = json.loads(p.stdout)
    assert len(r["prompt_ids"]) == 4 and len(r["output_ids"]) == 5 and isinstance(r["text"], str)


def test_eval_reports_agreement(tmp_path):
    out = tmp_path / "b"
    p = edgesmith("compile", "random:tiny", "--quant", "q4f32", "-o", out, "--eval", check=True)
    assert "top-1 agreement" in p.stdout and "mean KL" in p.stdout
    assert "typical for q4f32 on random:tiny" in p.stdout and "as expected" in p.stdout, p.stdout
    assert "eval" in json.loads((out / "manifest.json").read_text())
    assert "accuracy" in edgesmith("inspect", out, check=True).stdout


# ---------------------------------------------------------------- bad input
@pytest.fixture
def ckpt(tiny_ckpt_dir, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt_dir("mini-4k"), dst)
    return dst


def test_path_that_is_not_a_folder(tmp_path):
    f = tmp_path / "model.bin"
    f.write_text("x")
    for bad in (f, tmp_path / "missing"):
        p = edgesmith("compile", bad, "-o", tmp_path / "out")
        assert_one_line_error(p, str(bad))
    assert no_partial_output(tmp_path, "out")


@pytest.mark.parametrize("case, needle", [
    ("llama", "LlamaForCausalLM"),
    ("no-safetensors", "safetensors"),
    ("truncated", "truncated"),
    ("wrong-shape", "model.layers.0.mlp.down_proj.weight"),
])
def test_bad_checkpoint(case, needle, ckpt, tmp_path):
    if case == "llama":
        hf_tiny.corrupt_architecture(ckpt)
    elif case == "no-safetensors":
        for f in ckpt.glob("*.safetensors"):
            f.unlink()
    elif case == "truncated":
        hf_tiny.corrupt_truncate(ckpt)
    elif case == "wrong-shape":
        hf_tiny.corrupt_tensor_shape(ckpt, "model.layers.0.mlp.down_proj.weight", (64, 64))
    p = edgesmith("compile", ckpt, "-o", tmp_path / "out")
    assert_one_line_error(p, needle)
    assert no_partial_output(tmp_path, "out")


@pytest.mark.parametrize("flag, value, needle", [("--quant", "q3f16", "q3f16"), ("--target", "riscv-phone", "riscv-phone")])
def test_unknown_quant_or_target(flag, value, needle, tmp_path):
    p = edgesmith("compile", "random:tiny", flag, value, "-o", tmp_path / "out")
    assert_one_line_error(p, needle)
    assert no_partial_output(tmp_path, "out")


def test_failure_mid_compile_leaves_no_partial_bundle(tmp_path, monkeypatch):
    """A failure after files were written (here: lowering) removes them; an old bundle survives."""
    from edgesmith import cli
    from edgesmith.compiler import build
    from edgesmith.errors import EdgesmithError

    out = tmp_path / "out"
    assert cli.main(["compile", "random:tiny", "-o", str(out), "-q"]) == 0
    before = (out / "manifest.json").read_bytes()

    def boom(*a, **k):
        raise EdgesmithError("simulated failure while lowering")

    monkeypatch.setattr(build, "lower", boom)
    assert cli.main(["compile", "random:tiny", "--quant", "q4f32", "-o", str(out), "-q"]) == 1
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_debug_shows_traceback(tmp_path):
    p = edgesmith("--debug", "compile", "random:nope", "-o", tmp_path / "out")
    assert p.returncode != 0 and "Traceback" in p.stderr


def test_run_errors(tiny_bundle, tmp_path):
    assert_one_line_error(edgesmith("run", tmp_path, "--tokens", "1"), "manifest.json")
    assert_one_line_error(edgesmith("run", tiny_bundle, "--prompt", "hello"), "--tokens")
    for engine in ("python", "runner"):
        assert_one_line_error(edgesmith("run", tiny_bundle, "--tokens", "1,99999", "--engine", engine), "99999")


def test_help_is_fast():
    code = ("import sys; from edgesmith import cli\ntry: cli.main(['--help'])\nexcept SystemExit: pass\n"
            "print('TVM-IMPORTED' if 'tvm' in sys.modules else 'NO-TVM')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0 and "compile" in p.stdout
    assert "NO-TVM" in p.stdout, "the CLI must import TVM lazily"


@pytest.mark.parametrize("damage, needle", [
    ("missing-shard", "params_shard_0.bin"),
    ("corrupted-shard", "sha256"),
    ("tvm-version", "TVM 0.0.1"),
    ("wrong-arch", "riscv64"),
])
@pytest.mark.parametrize("engine", ["runner", "python"])
def test_damaged_bundle_is_refused_in_one_line(damage, needle, engine, tiny_bundle, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    manifest = json.loads((b / "manifest.json").read_text())
    if damage == "missing-shard":
        (b / "params" / "params_shard_0.bin").unlink()
    elif damage == "corrupted-shard":
        with open(b / "params" / "params_shard_0.bin", "r+b") as f:
            f.seek(100)
            f.write(b"\xff\xfe")
    else:
        manifest["tvm_version" if damage == "tvm-version" else "arch"] = "0.0.1" if damage == "tvm-version" else "riscv64"
        (b / "manifest.json").write_text(json.dumps(manifest))
    p = edgesmith("run", b, "--tokens", "1,2", "-n", "2", "--engine", engine)
    assert_one_line_error(p, needle)
