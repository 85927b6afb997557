"""A Hugging Face checkpoint folder: config.json + model.safetensors, or shards listed in
model.safetensors.index.json (tokenizer.json, if present, goes into the bundle). Tensor names are
the HF ones; every `read` returns float32, C-contiguous. (Opening any source: checkpoint.py.)

The safetensors format is parsed here: 8-byte little-endian header length N, N bytes of JSON
{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the data; offsets
are relative to the first byte after the header. Every offset is checked against the file size
when the file is opened, so a truncated download fails at open, not halfway through a compile.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgesmith.errors import CheckpointError

from edgesmith.compiler.inputs import tokenizer_files

from .checkpoint import Checkpoint
from .config import load_config

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# safetensors dtype -> (numpy storage dtype, our dtype name); BF16 is stored as uint16 and widened by hand.
_DTYPES = {"F32": (np.dtype("<f4"), "float32"), "F16": (np.dtype("<f2"), "float16"), "BF16": (np.dtype("<u2"), "bfloat16")}
_MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's own limit


# ---------------------------------------------------------------- safetensors


class SafetensorsFile:
    """One .safetensors file: header parsed and bounds-checked at open, tensors memory-mapped on read."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    self._fail(f"is {self.size} bytes, too short to hold a header")
                (n,) = struct.unpack("<Q", head)
                if n > _MAX_HEADER or 8 + n > self.size:
                    self._fail(f"header length {n} runs past the file's {self.size} bytes (truncated or not safetensors)")
                self.header_bytes = f.read(n)
        except OSError as e:
            raise CheckpointError(f"cannot read {self.path}: {e.strerror} — check the file's permissions") from None
        self.data_start = 8 + n
        try:
            header = json.loads(self.header_bytes)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            self._fail(f"has a header that is not JSON ({e.msg} at byte {e.pos})")
        if not isinstance(header, dict):
            self._fail("has a header that is not a JSON object")
        header.pop("__metadata__", None)
        self.entries: dict[str, tuple[np.dtype, str, tuple[int, ...], int, int]] = {}
        data_size = self.size - self.data_start
        for name, e in header.items():
            try:
                dtype_code, shape, (begin, end) = e["dtype"], tuple(int(d) for d in e["shape"]), e["data_offsets"]
            except (KeyError, TypeError, ValueError):
                self._fail(f"has a malformed header entry for {name!r}: {json.dumps(e)[:80]}")
            if dtype_code not in _DTYPES:
                raise CheckpointError(
                    f"{self.path}: tensor {name!r} has dtype {dtype_code}; edgesmith reads F32, F16 and BF16"
                    " — save the checkpoint in one of those"
                )
            np_dtype, dtype_name = _DTYPES[dtype_code]
            nbytes = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
            if not (isinstance(begin, int) and isinstance(end, int)) or end - begin != nbytes or begin < 0:
                self._fail(f"says tensor {name!r} {list(shape)} {dtype_code} spans bytes [{begin}, {end}), not {nbytes} bytes")
            if end > data_size:
                raise CheckpointError(
                    f"{self.path} is truncated: tensor {name!r} ends at data byte {end} but the file holds"
                    f" {data_size} — download it again"
                )
            self.entries[name] = (np_dtype, dtype_name, shape, begin, end)
        self._mmap: np.memmap | None = None

    def _fail(self, what: str):
        raise CheckpointError(f"{self.path} {what} — download or convert the checkpoint again")

    def names(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][2]

    def dtype_name(self, name: str) -> str:
        return self.entries[name][1]

    def read(self, name: str) -> np.ndarray:
        np_dtype, dtype_name, shape, begin, end = self.entries[name]
        if self._mmap is None:
            if self.path.stat().st_size != self.size:
                raise CheckpointError(f"{self.path} changed size since it was opened — do not edit a checkpoint mid-compile")
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        raw = self._mmap[self.data_start + begin : self.data_start + end].view(np_dtype).reshape(shape)
        if dtype_name == "bfloat16":
            # bf16 is the top half of an f32: widening is a shift, exact and faster than ml_dtypes' cast.
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return np.array(raw, dtype=np.float32, order="C")  # always a copy, never a view into the map

    def fingerprint_into(self, h) -> None:
        """Header + size + 16 small samples of the data: cheap, and catches a re-download of other weights."""
        h.update(self.path.name.encode() + b"\0" + str(self.size).encode() + b"\0" + self.header_bytes)
        with open(self.path, "rb") as f:
            for i in range(16):
                f.seek(self.data_start + (self.size - self.data_start) * i // 16)
                h.update(f.read(4096))


class FolderCheckpoint(Checkpoint):
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.spec = str(self.folder.resolve())
        config = load_config(self.folder)
        self.files = _open_safetensors(self.folder)
        self._where: dict[str, SafetensorsFile] = {}
        for st in self.files:
            for name in st.names():
                if name in self._where:
                    raise CheckpointError(
                        f"tensor {name!r} is in both {self._where[name].path.name} and {st.path.name} under"
                        f" {self.folder} — remove the stray file"
                    )
                self._where[name] = st
        self._shapes = {n: st.shape(n) for n, st in self._where.items()}
        if not self._shapes:
            raise CheckpointError(f"the safetensors files in {self.folder} hold no tensors — download the checkpoint again")
        # The files are the truth about the dtype; config.json's torch_dtype is only a hint.
        probe = "model.embed_tokens.weight" if "model.embed_tokens.weight" in self._where else next(iter(self._where))
        self.config = replace(config, dtype=self._where[probe].dtype_name(probe))
        # the checkpoint's own tokenizer.json as is (its chat template too), or its tokenizer.model converted
        choice = tokenizer_files.from_folder(self.folder, self.config)
        self.tokenizer_path, self.tokenizer_files, self.tokenizer_entry = choice.path, choice.files, choice.entry
        n = len(self.files)
        self.description = f"folder {self.folder} ({n} shard{'s' if n != 1 else ''}, {self.config.dtype})"

    def _read(self, name: str) -> np.ndarray:
        return self._where[name].read(name)

    def fingerprint(self) -> str:
        h = hashlib.sha256(b"edgesmith-folder-v1\0")
        h.update((self.folder / "config.json").read_bytes())
        for st in self.files:
            st.fingerprint_into(h)
        return h.hexdigest()


def _open_safetensors(folder: Path) -> list[SafetensorsFile]:
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            shard_names = sorted(set(weight_map.values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(
                f"{index} is not a safetensors index with a weight_map ({type(e).__name__}) — download it again"
            ) from None
        for shard in shard_names:
            if not (folder / shard).is_file():
                raise CheckpointError(f"{index} names shard {shard!r}, which is not in {folder} — download the missing shard")
        files = {s: SafetensorsFile(folder / s) for s in shard_names}
        for name, shard in weight_map.items():
            if name not in files[shard].entries:
                raise CheckpointError(f"{index} puts tensor {name!r} in {shard}, which lacks it — download the shard again")
        return list(files.values())
    if (folder / SINGLE_FILE).is_file():
        return [SafetensorsFile(folder / SINGLE_FILE)]
    found = sorted(folder.glob("*.safetensors"))
    if not found:
        others = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".gguf"))
        hint = f" (found {', '.join(others[:3])}: convert to safetensors)" if others else ""
        raise CheckpointError(f"no *.safetensors files in {folder}{hint} — save the model with safe_serialization")
    return [SafetensorsFile(p) for p in found]
