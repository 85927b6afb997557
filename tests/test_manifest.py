"""The typed manifest (compiler/bundle/manifest.py): one reader that checks, one writer, one update."""
from __future__ import annotations

import json

import pytest

from edgesmith.compiler.inputs.config import load_config
from edgesmith.compiler.bundle.manifest import (EvalReport, FileEntry, KvCacheInfo, Manifest, ModelInfo, TargetInfo,
                                         TuningInfo)
from edgesmith.compiler.models import RANDOM_PRESETS
from edgesmith.compiler.models.phi3.config import Phi3Config
from edgesmith.errors import BundleError


def _bundle(tmp_path, **changes):
    (tmp_path / "lib").mkdir(exist_ok=True)
    (tmp_path / "lib" / "model.so").write_bytes(b"\x7fELF...")
    fields = dict(model=ModelInfo.of(load_config(RANDOM_PRESETS["tiny"]), source="random:tiny (seed 0)",
                                     spec="random:tiny:seed=0"),
                  quant="q4f16", target=TargetInfo(preset="host", layout="linux"), arch="x86_64",
                  tvm_version="0.27.0.post1", params=("w",),
                  kv_cache=KvCacheInfo(page_size=16, prefill_chunk_size=512, max_total_seq_len=128))
    return Manifest(**dict(fields, **changes)).write(tmp_path)


def test_write_computes_the_file_table_and_read_gives_it_back(tmp_path):
    import hashlib

    m = _bundle(tmp_path, tuning=TuningInfo(source="defaults"))
    assert m.files == {"lib/model.so": FileEntry(sha256=hashlib.sha256(b"\x7fELF...").hexdigest(), size=7)}
    back = Manifest.read(tmp_path)
    assert back == m and back.model.spec == "random:tiny:seed=0"
    # the sections come back typed: the architecture's own config, attributes all the way down
    assert isinstance(back.config, Phi3Config) and back.config.vocab_size == RANDOM_PRESETS["tiny"]["vocab_size"]
    assert back.kv_cache.max_total_seq_len == 128 and back.kv_dtype == "float32" and back.tuning.defaults
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert "eval" not in on_disk and "device" not in on_disk  # unset fields are left out
    assert on_disk["model"]["architecture"] == "Phi3ForCausalLM"
    assert on_disk["kv_cache"] == {"page_size": 16, "prefill_chunk_size": 512, "max_total_seq_len": 128,
                                   "dtype": "float32"}


def test_sections_are_frozen(tmp_path):
    import dataclasses

    m = _bundle(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.kv_cache.dtype = "float16"
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.quant = "q0f32"


def test_a_bundle_without_the_architecture_key_reads_as_phi3(tmp_path):
    _bundle(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    del data["model"]["architecture"]  # bundles written before the manifest named it
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    assert isinstance(Manifest.read(tmp_path).config, Phi3Config)


def test_an_unknown_architecture_is_one_line_when_its_config_is_asked_for(tmp_path):
    _bundle(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["model"]["architecture"] = "MambaForCausalLM"
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    m = Manifest.read(tmp_path)  # what runs the runner (session, push) needs no architecture
    assert m.target.preset == "host" and m.model.architecture == "MambaForCausalLM"
    with pytest.raises(BundleError, match="MambaForCausalLM, which this edgesmith does not know") as info:
        m.config
    assert "\n" not in str(info.value)


def test_update_rewrites_atomically_and_refuses_the_file_table(tmp_path):
    m = _bundle(tmp_path)
    report = EvalReport(positions=32, top1_agreement=0.5, mean_kl=0.01, max_abs_diff=0.2)
    new = m.update(tmp_path, eval=report)
    assert Manifest.read(tmp_path).eval == report == new.eval and m.eval is None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(ValueError):
        m.update(tmp_path, files={})
    with pytest.raises(ValueError):
        m.update(tmp_path, colour="blue")


@pytest.mark.parametrize("damage, needle", [
    (lambda d: d.pop("files"), "no 'files' table"),
    (lambda d: d["files"].update({"../etc/passwd": {"sha256": "0" * 64, "size": 1}}), "not a path inside"),
    (lambda d: d.pop("params"), "no 'params'"),
    (lambda d: d["target"].pop("preset"), "no 'target' preset"),
    (lambda d: d.update(format=2), "bundle format 2"),
    (lambda d: d["kv_cache"].pop("page_size"), "damaged"),
    (lambda d: d.update(device=[1]), "'device' is not an object"),
])
def test_damaged_manifests_are_one_line(tmp_path, damage, needle):
    _bundle(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    damage(data)
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=needle) as info:
        Manifest.read(tmp_path)
    assert "\n" not in str(info.value)
