"""An ONNX model read without its weights: the graph proto, an index of every initializer and
Constant, one tensor read at a time from the external data file; and what an ONNX Runtime GenAI
graph's linear and embedding nodes hold, whatever the architecture.

  OnnxFile   the graph proto (onnx.load with load_external_data=False: no weight is read), an
             index of every initializer and Constant (main graph and If branches), and one
             tensor read at a time from the external data file (read into a buffer of its own:
             no map of the file stays resident).
             Every external location is checked at open: inside the model's folder, offset +
             length within the file and equal to the tensor's size, so a truncated
             model.onnx.data fails at open, not halfway through a compile.
  LinearNode, Embedding   a MatMul / MatMulNBits and a Gather / GatherBlockQuantized, as an
             architecture's graph walk (compiler/models/<name>/onnx_graph.py) finds them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgesmith.errors import CheckpointError

MS = "com.microsoft"
LINEAR_OPS = ("MatMul", "MatMulNBits")


def _onnx():
    try:
        import onnx
    except ImportError:
        raise CheckpointError("reading an ONNX model needs the `onnx` package — pip install onnx") from None
    return onnx


# ---------------------------------------------------------------- the file


@dataclass
class TensorRef:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    proto: object = None  # the TensorProto for inline data
    offset: int = -1  # external data: byte range in `OnnxFile.data_path`
    length: int = 0


class OnnxFile:
    def __init__(self, path: Path):
        onnx = _onnx()
        self.path = Path(path)
        try:
            self.model = onnx.load(str(self.path), load_external_data=False)
        except Exception as e:  # protobuf's DecodeError and friends: not an ONNX file
            raise CheckpointError(f"{self.path} is not a readable ONNX model ({type(e).__name__}) — export it again") from None
        self.graph = self.model.graph
        self.data_path: Path | None = None
        self._data_size = 0
        self._fh = None
        self.tensors: dict[str, TensorRef] = {}
        for init in self.graph.initializer:
            self.tensors[init.name] = self._ref(init)
        # Constant nodes anywhere (the longrope caches sit in the branches of an If).
        for node in _all_nodes(self.graph):
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for a in node.attribute:
                    if a.name == "value":
                        self.tensors[node.output[0]] = self._ref(a.t, name=node.output[0])

    def _ref(self, t, name: str | None = None) -> TensorRef:
        onnx = _onnx()
        name = name or t.name
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
        except Exception:
            raise CheckpointError(f"{self.path}: tensor {name!r} has ONNX data type {t.data_type}, which edgesmith does not read") from None
        shape = tuple(int(d) for d in t.dims)
        ref = TensorRef(name, dtype, shape, proto=t)
        if t.data_location != onnx.TensorProto.EXTERNAL:
            return ref
        info = {e.key: e.value for e in t.external_data}
        where = self._data_file(name, info.get("location", ""))
        offset, length = int(info.get("offset", 0)), int(info.get("length", -1))
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if length not in (-1, nbytes):
            raise CheckpointError(f"{self.path}: tensor {name!r} {list(shape)} {dtype} says {length} bytes, not {nbytes} — export the model again")
        if offset < 0 or offset + nbytes > self._data_size:
            raise CheckpointError(
                f"{where} is truncated: tensor {name!r} ends at byte {offset + nbytes} but the file holds"
                f" {self._data_size} — download or export the model again"
            )
        ref.offset, ref.length = offset, nbytes
        return ref

    def _data_file(self, name: str, location: str) -> Path:
        # Only a plain file name or a path below the model's folder: an ONNX file must not make
        # us read /etc/shadow or a sibling folder.
        rel = Path(location)
        if not location or rel.is_absolute() or ".." in rel.parts:
            raise CheckpointError(f"{self.path}: tensor {name!r} points at external data {location!r}, outside the model's folder — refused")
        where = self.path.parent / rel
        if self.data_path is None:
            if not where.is_file():
                raise CheckpointError(f"{self.path} keeps its weights in {location}, which is not in {self.path.parent} — copy it there")
            self.data_path, self._data_size = where, where.stat().st_size
        elif where != self.data_path:
            raise CheckpointError(f"{self.path} spreads its weights over {self.data_path.name} and {location}; edgesmith reads one data file")
        return where

    def has(self, name: str) -> bool:
        return name in self.tensors

    def info(self, name: str) -> TensorRef:
        if name not in self.tensors:
            raise CheckpointError(f"{self.path}: {name!r} is not an initializer or constant — edgesmith needs weights stored in the model")
        return self.tensors[name]

    def read(self, name: str) -> np.ndarray:
        """The tensor in its stored dtype, C-contiguous, owned by the caller."""
        ref = self.info(name)
        if ref.offset < 0:
            return np.array(_onnx().numpy_helper.to_array(ref.proto), dtype=ref.dtype, order="C").reshape(ref.shape)
        if self._fh is None:
            if self.data_path.stat().st_size != self._data_size:
                raise CheckpointError(f"{self.data_path} changed size since it was opened — do not edit a model mid-compile")
            self._fh = open(self.data_path, "rb")
        buf = bytearray(ref.length)
        self._fh.seek(ref.offset)
        if self._fh.readinto(buf) != ref.length:
            raise CheckpointError(f"{self.data_path} ended early reading {name!r} — do not edit a model mid-compile")
        return np.frombuffer(buf, dtype=ref.dtype).reshape(ref.shape)


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for a in node.attribute:
            if a.g is not None and a.type == a.GRAPH:
                yield from _all_nodes(a.g)


def attrs(node) -> dict:
    onnx = _onnx()
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute if a.type != a.GRAPH}


# ---------------------------------------------------------------- what the walk finds


@dataclass
class LinearNode:
    """y = x @ W. float: `weight` [K, N] (MatMul's B). int4: MatMulNBits `weight` uint8
    [N, blocks, block_size/2] (element k of row n: byte k//2, low nibble first) and `scales`
    [N, blocks]; value = (nibble - 8) * scale (zero point 8: none stored, or all 8)."""

    node: str
    op: str
    out: str  # the output tensor
    weight: str
    k: int
    n: int
    scales: str | None = None
    block_size: int = 0

    @property
    def int4(self) -> bool:
        return self.op == "MatMulNBits"


@dataclass
class Embedding:
    node: str
    weight: str  # float [V, H], or uint8 int4 codes (GatherBlockQuantized)
    scales: str | None = None
    block_size: int = 0
    shared_with_lm_head: bool = False  # GatherBlockQuantized over lm_head's own codes and scales
