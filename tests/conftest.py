import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/hf_tiny.py and friends

def _test_cache() -> Path:
    """The tests' own cache, fresh each session (compiled bundles, runner builds, references), so
    nothing a test finds there was left by another version. Only downloads that are keyed by
    their content and checked (the aarch64 TVM runtime from the package registry, hash-checked;
    the Phi-3 tokenizer install.sh builds, checked against llama.cpp's test cases) are shared with
    the user's cache, as links: making them again each session would only cost time.
    EDGESMITH_TEST_CACHE names a folder to keep instead."""
    import atexit
    import shutil
    import tempfile

    if os.environ.get("EDGESMITH_TEST_CACHE"):
        return Path(os.environ["EDGESMITH_TEST_CACHE"])
    cache = Path(tempfile.mkdtemp(prefix="edgesmith-test-cache-"))
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
    user = Path(os.environ.get("EDGESMITH_CACHE") or Path.home() / ".cache" / "edgesmith")
    for shared in ("runtime", "tokenizers"):
        (user / shared).mkdir(parents=True, exist_ok=True)
        (cache / shared).symlink_to(user / shared)
    return cache


os.environ["EDGESMITH_CACHE"] = str(_test_cache())


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


def pytest_collection_modifyitems(config, items):
    """EDGESMITH_TEST_SHUFFLE=SEED runs the tests in an order shuffled by SEED (how the suite is
    checked for order dependence: issue #21); unset, the files' own order."""
    seed = os.environ.get("EDGESMITH_TEST_SHUFFLE")
    if seed:
        import random

        random.Random(seed).shuffle(items)


def pytest_report_header(config):
    seed = os.environ.get("EDGESMITH_TEST_SHUFFLE")
    return f"test order shuffled with seed {seed} (EDGESMITH_TEST_SHUFFLE)" if seed else None


@pytest.hookimpl(wrapper=True, tryfirst=True)  # the outermost wrapper: after pytest's own -ra summary
def pytest_terminal_summary(terminalreporter):
    """One line at the very end (above the counts) naming every skipped group and how many tests it
    holds (README, "Which tests need what"): after scripts/install.sh only missing hardware remains."""
    result = yield
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return result
    groups: dict[str, int] = {}
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        reason = reason if len(reason) <= 90 else reason[:87] + "..."
        groups[reason] = groups.get(reason, 0) + 1
    terminalreporter.write_line(f"skipped groups ({len(skipped)} tests): "
                                + "; ".join(f"{n} x {r}" for r, n in sorted(groups.items(), key=lambda g: -g[1])))
    return result


@pytest.fixture(scope="session")
def phi3_chat_bundle(tmp_path_factory) -> Path:
    """random:phi-3-mini-4k with one layer, host, the built Phi-3 tokenizer (so a chat template):
    the chat's and `edgesmith serve`'s tests (test_chat.py, test_serve.py) share it."""
    import subprocess

    out = tmp_path_factory.mktemp("phi3-chat") / "phi3-chat"
    p = subprocess.run([sys.executable, "-m", "edgesmith", "compile", "random:phi-3-mini-4k:layers=1", "-o", str(out),
                        "-q"], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    assert (out / "tokenizer.json").is_file(), "the Phi-3 tokenizer is not built: run `edgesmith tokenizer fetch`"
    return out
