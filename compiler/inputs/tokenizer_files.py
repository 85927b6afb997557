"""Which tokenizer a bundle carries, in one place: `compile` (from the checkpoint folder, or
`--tokenizer`) and `edgesmith tokenizer add` (into a compiled bundle) both ask here.

A checkpoint folder offers, in order: its tokenizer.json (as is, with tokenizer_config.json and
chat_template.jinja); its SentencePiece tokenizer.model, converted (compiler/models/spm.py; the
folder's tokenizer_config.json, where its chat template lives, goes with it); else nothing, and
the note says what would do: `--tokenizer phi3` when the vocabulary is Phi-3's (32064 rows).
`--tokenizer` / `tokenizer add` take: phi3 (the built Phi-3 tokenizer), a tokenizer.json, a
tokenizer.model, or a folder holding either.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from edgesmith.errors import EdgesmithError

BUILT = {"phi3": "phi-3", "phi-3": "phi-3"}  # --tokenizer NAME -> the vocabulary a builder makes
COMPANIONS = ("tokenizer_config.json", "chat_template.jinja")  # what goes with a tokenizer.json


@dataclass(frozen=True)
class TokenizerChoice:
    path: Path | None  # the tokenizer.json the bundle carries (None: none)
    files: tuple[Path, ...]  # what goes with it: tokenizer_config.json, chat_template.jinja
    entry: object  # the manifest's TokenizerInfo


def _info(**kw):
    from edgesmith.compiler.bundle.manifest import TokenizerInfo

    return TokenizerInfo(**kw)


def _companions(folder: Path) -> tuple[Path, ...]:
    return tuple(folder / name for name in COMPANIONS if (folder / name).is_file())


def converted(model_file: Path, vocab_size: int) -> Path:
    """The folder holding tokenizer.json (+ tokenizer_config.json) converted from a SentencePiece
    model, kept in the cache by the model file's sha256 (converted once)."""
    from edgesmith.compiler.models import spm
    from edgesmith.targets.cache import cache_root

    h = hashlib.sha256(Path(model_file).read_bytes())
    for beside in ("tokenizer_config.json", "added_tokens.json"):  # the tokens the folder adds (spm.added_tokens)
        path = Path(model_file).parent / beside
        h.update(path.read_bytes() if path.is_file() else b"-")
    digest = h.hexdigest()
    folder = cache_root() / "tokenizers" / f"spm-{digest[:24]}"
    if not (folder / "tokenizer.json").is_file():
        import os
        import tempfile

        folder.parent.mkdir(parents=True, exist_ok=True)
        import shutil

        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            spm.convert_model(model_file, tmp, vocab_size)
            os.rename(tmp, folder)
        except OSError:  # another process converted it first: theirs is the same
            shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:  # not a model we convert: nothing half-made stays in the cache
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return folder


def from_folder(folder: Path, config) -> TokenizerChoice:
    """What a checkpoint folder offers (its own files only; nothing is chosen for it)."""
    folder = Path(folder)
    tok = folder / "tokenizer.json"
    if tok.is_file():
        return TokenizerChoice(tok, _companions(folder), _info(source="checkpoint"))
    model = folder / "tokenizer.model"
    if model.is_file():  # the folder's tokenizer_config.json (its chat template) wins over the converted one
        return _from_model(model, config, _companions(folder) if (folder / "tokenizer_config.json").is_file() else None)
    return TokenizerChoice(None, (), _info(note=f"{folder} has no tokenizer.json or tokenizer.model"
                                                + offer(config)))


def _from_model(model: Path, config, files: tuple[Path, ...] | None = None) -> TokenizerChoice:
    """A SentencePiece tokenizer.model, converted; files: its companions (None: the converted config)."""
    out = converted(model, config.vocab_size)
    return TokenizerChoice(out / "tokenizer.json", files if files is not None else (out / "tokenizer_config.json",),
                           _info(source="tokenizer.model", origin=f"{model} (SentencePiece, converted)"))


def offer(config) -> str:
    """'; --tokenizer phi3 ...' where a built tokenizer's vocabulary fits the model, else ''."""
    for name, vocabulary in BUILT.items():
        builder = _builder(vocabulary)
        if builder is not None and builder.fits(config):
            return (f"; its {config.vocab_size}-token vocabulary is Phi-3's: compile with --tokenizer {name} "
                    f"(or `edgesmith tokenizer add BUNDLE {name}` later) to use the built Phi-3 tokenizer")
    return ""


def _builder(vocabulary: str):
    from edgesmith.compiler.models import tokenizer_builder

    return tokenizer_builder(vocabulary)


def from_spec(spec: str, config) -> TokenizerChoice:
    """--tokenizer SPEC: phi3, a tokenizer.json, a tokenizer.model, or a folder holding one."""
    if spec in BUILT:
        builder = _builder(BUILT[spec])
        if not builder.fits(config):
            raise EdgesmithError(f"--tokenizer {spec}: the model has {config.vocab_size} embedding rows, the "
                                 f"{spec} tokenizer is for {builder.vocab_size()}: it is not this model's vocabulary")
        folder, entry = builder.attach()
        return TokenizerChoice(folder / "tokenizer.json", (folder / "tokenizer_config.json",), entry)
    path = Path(spec)
    if path.is_dir():
        got = from_folder(path, config)
        if got.path is None:
            raise EdgesmithError(f"--tokenizer {spec}: the folder has no tokenizer.json or tokenizer.model")
        return got
    if not path.is_file():
        raise EdgesmithError(f"--tokenizer {spec}: no such file; give phi3, a tokenizer.json, a tokenizer.model "
                             "or a folder holding one")
    if path.suffix == ".model":
        return _from_model(path, config)
    size = _json_vocab_size(path)
    if size > config.vocab_size:
        raise EdgesmithError(f"--tokenizer {spec}: it has {size} tokens, more than the model's {config.vocab_size} "
                             "embedding rows: it is another model's tokenizer")
    return TokenizerChoice(path, _companions(path.parent) if path.name == "tokenizer.json" else (),
                           _info(source="file", origin=str(path)))


def _json_vocab_size(path: Path) -> int:
    try:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)
    except Exception as err:  # noqa: BLE001 - the tokenizers library's errors name no file
        raise EdgesmithError(f"{path} is not a tokenizer.json the tokenizers library reads "
                             f"({str(err).splitlines()[0][:120]})") from None



def copy_into(choice: TokenizerChoice, folder: Path):
    """tokenizer.json and what goes with it into the bundle folder; returns the manifest's
    "tokenizer" entry (chat_template: whether a template came along)."""
    import dataclasses
    import shutil

    entry = choice.entry
    if choice.path:
        shutil.copy2(choice.path, Path(folder) / "tokenizer.json")
        for extra in choice.files:
            shutil.copy2(extra, Path(folder) / extra.name)
        entry = dataclasses.replace(entry, chat_template=(Path(folder) / "chat_template.jinja").is_file()
                                    or _has_chat_template(Path(folder) / "tokenizer_config.json"))
    return entry


def _has_chat_template(config: Path) -> bool:
    import json

    try:
        return bool(json.loads(config.read_text()).get("chat_template"))
    except (OSError, ValueError, AttributeError):
        return False


def add_to_bundle(bundle: Path, spec: str, *, force: bool = False):
    """`edgesmith tokenizer add BUNDLE SPEC`: put a tokenizer into a compiled bundle without a
    recompile, and rewrite the manifest's file table (sha256, size) and tokenizer entry, which the
    runner and a device push verify. The bundle is verified first: new hashes never bless a
    corrupt copy. Returns the new manifest."""
    import dataclasses
    import os
    import shutil
    import tempfile

    from edgesmith.compiler.bundle.folder import read_manifest, verify

    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    if "tokenizer.json" in manifest.files and not force:
        raise EdgesmithError(f"bundle {bundle} already carries a tokenizer.json; add --force to replace it")
    choice = from_spec(spec, manifest.model.config)
    verify(bundle, manifest)
    stage = Path(tempfile.mkdtemp(prefix=".tokenizer-add-", dir=bundle))
    try:
        entry = copy_into(choice, stage)
        for name in COMPANIONS:  # a replaced tokenizer's template and config go with it
            if name in manifest.files and not (stage / name).exists():
                (bundle / name).unlink()
        for item in stage.iterdir():
            os.replace(item, bundle / item.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return dataclasses.replace(manifest, tokenizer=entry).write(bundle)
