"""The typed manifest (compiler/manifest.py): one reader that checks, one writer, one update."""
from __future__ import annotations

import json

import pytest

from edgesmith.compiler.manifest import Manifest
from edgesmith.errors import BundleError


def _bundle(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "model.so").write_bytes(b"\x7fELF...")
    return Manifest(model={"source": "random:tiny (seed 0)", "spec": "random:tiny:seed=0", "config": {}},
                    quant="q4f16", target={"preset": "host", "layout": "linux"}, arch="x86_64",
                    tvm_version="0.27.0.post1", kv_cache={"page_size": 16}, params=["w"]).write(tmp_path)


def test_write_computes_the_file_table_and_read_gives_it_back(tmp_path):
    import hashlib

    m = _bundle(tmp_path)
    assert m.files == {"lib/model.so": {"sha256": hashlib.sha256(b"\x7fELF...").hexdigest(), "size": 7}}
    back = Manifest.read(tmp_path)
    assert back == m and back.model["spec"] == "random:tiny:seed=0"
    assert "eval" not in json.loads((tmp_path / "manifest.json").read_text())  # unset fields are left out


def test_update_rewrites_atomically_and_refuses_the_file_table(tmp_path):
    m = _bundle(tmp_path)
    m.update(tmp_path, eval={"mean_kl": 0.01})
    assert Manifest.read(tmp_path).eval == {"mean_kl": 0.01}
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
])
def test_damaged_manifests_are_one_line(tmp_path, damage, needle):
    _bundle(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    damage(data)
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=needle) as info:
        Manifest.read(tmp_path)
    assert "\n" not in str(info.value)
