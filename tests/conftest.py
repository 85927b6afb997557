import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/hf_tiny.py and friends

# Keep the user's cache out of the tests: the device runtime and runner builds land here.
os.environ.setdefault("EDGESMITH_CACHE", str(Path(os.environ.get("EDGESMITH_TEST_CACHE", Path.home() / ".cache" / "edgesmith"))))


@pytest.fixture(scope="session")
def tiny_ckpt_dir(tmp_path_factory):
    """One tiny HF checkpoint folder per variant, made lazily and shared by the session."""
    from hf_tiny import make_tiny_checkpoint

    made = {}

    def get(variant: str) -> Path:
        if variant not in made:
            made[variant] = make_tiny_checkpoint(variant, tmp_path_factory.mktemp(variant.replace(".", "_")) / "ckpt")
        return made[variant]

    return get


@pytest.fixture(scope="session")
def compiled(tmp_path_factory, tiny_ckpt_dir):
    """compiled(model, quant, target="host") -> bundle path, compiled once per session."""
    from edgesmith.compiler.build import compile_bundle

    cache = {}

    def get(model: str, quant: str, target: str = "host") -> Path:
        key = (model, quant, target)
        if key not in cache:
            src = model if model.startswith("random:") else tiny_ckpt_dir(model)
            out = tmp_path_factory.mktemp("bundles") / f"{model.replace(':', '_')}-{quant}-{target}"
            cache[key] = compile_bundle(src, quant, target, out)
        return cache[key]

    return get
