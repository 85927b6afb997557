"""An ONNX Runtime GenAI Phi-3 graph (read without its weights: compiler/inputs/onnx_file.py)
matched onto Phi3ForCausalLM, free of any weight bytes until a tensor is asked for:
  match_phi3 walks the hidden-state path from `input_ids` to `logits` and names, per layer,
             the nodes that carry our parameters: the embedding (Gather, or GatherBlockQuantized
             over the lm_head's int4 codes when embeddings are tied), the RMSNorms
             ((Skip)SimplifiedLayerNormalization), q/k/v (one packed or three MatMul[NBits]),
             attention (GroupQueryAttention with do_rotary, or RotaryEmbedding + MultiHeadAttention),
             o_proj, gate/up (two, or one packed + Split) -> x*Sigmoid(x) * up -> down, the final
             norm and lm_head. Anything else on that path, or any other node reading the hidden
             state, is refused by name.
             Nodes off the path (attention-mask plumbing, the longrope cache If) are left to
             ONNX Runtime: our paged KV cache does the same job.

The builder's node layout (ONNX Runtime GenAI 0.18, `-p int4|fp16|fp32 -e cpu`) is the one
checked by the tests; Olive writes the same ops.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgesmith.compiler.inputs.onnx_file import LINEAR_OPS, MS, Embedding, LinearNode, OnnxFile, attrs
from edgesmith.errors import CheckpointError

ATTENTION_OPS = ("GroupQueryAttention", "MultiHeadAttention")


# ---------------------------------------------------------------- what the walk finds


@dataclass
class Layer:
    input_norm: str  # initializer names of the RMSNorm weights
    post_norm: str
    qkv: list[LinearNode]  # one packed [q; k; v], or q, k, v
    o: LinearNode
    gate_up: list[LinearNode]  # one packed [gate; up] (then a Split), or gate, up
    down: LinearNode
    attention: dict  # op, num_heads, kv_num_heads, scale, local_window_size, node
    rotary: dict  # interleaved, rotary_embedding_dim, cos, sin (tensor names), node


@dataclass
class Phi3Graph:
    embedding: Embedding
    layers: list[Layer]
    final_norm: str
    lm_head: LinearNode
    epsilons: set[float] = field(default_factory=set)
    cos_sin: tuple[str, str] = ("", "")  # the tensors every attention reads
    longrope: dict | None = None  # {"threshold": T, "short": (cos, sin), "long": (cos, sin)} from the If


# ---------------------------------------------------------------- the walk


class _Walk:
    def __init__(self, f: OnnxFile):
        self.f = f
        self.g = f.graph
        self.producer = {o: n for n in self.g.node for o in n.output if o}
        self.consumers: dict[str, list] = {}
        for n in self.g.node:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.visited: set[int] = set()
        self.hidden: set[str] = set()  # tensors carrying the hidden state

    def fail(self, what: str):
        raise CheckpointError(f"{self.f.path}: {what} — edgesmith maps ONNX Runtime GenAI's Phi-3 graph only (see README: ONNX input)")

    def visit(self, node, *hidden_outputs):
        self.visited.add(id(node))
        self.hidden.update(o for o in hidden_outputs if o)

    @staticmethod
    def describe(node) -> str:
        return f"node {node.name!r} ({(node.domain + ':') if node.domain else ''}{node.op_type})"

    def users(self, tensor: str) -> list:
        return self.consumers.get(tensor, [])

    def only_user(self, tensor: str, ops: tuple[str, ...], where: str):
        users = self.users(tensor)
        if len(users) != 1 or users[0].op_type not in ops:
            found = ", ".join(self.describe(u) for u in users) or "nothing"
            self.fail(f"{where}: expected {' or '.join(ops)} to read {tensor!r}, found {found}")
        return users[0]

    def linear(self, node, x: str, where: str) -> LinearNode:
        if node.op_type not in LINEAR_OPS or node.input[0] != x:
            self.fail(f"{where}: {self.describe(node)} reads {x!r} where a MatMul or MatMulNBits belongs")
        self.visit(node, node.output[0])
        if node.op_type == "MatMul":
            w = node.input[1]
            if not self.f.has(w) or len(self.f.info(w).shape) != 2:
                self.fail(f"{where}: {self.describe(node)} multiplies by {w!r}, not a stored 2-D weight")
            k, n = self.f.info(w).shape
            return LinearNode(node.name, "MatMul", node.output[0], w, k, n)
        a = attrs(node)
        bits, block, k, n = a.get("bits", 4), a.get("block_size", 0), a.get("K"), a.get("N")
        extra = [(i, name) for i, name in enumerate(node.input) if i >= 3 and name]
        for i, name in extra:
            if i == 3 and self._zero_points_are_8(name, n, k, block):
                continue
            what = {3: "zero points (asymmetric int4, e.g. AWQ)", 4: "a g_idx (act-order)", 5: "a bias"}.get(i, f"input {i}")
            raise CheckpointError(
                f"{self.f.path}: MatMulNBits {node.name!r} has {what}; edgesmith's int4 is symmetric with zero point 8"
                " and would have to requantize — compile the fp16/fp32 ONNX export or the Hugging Face checkpoint instead"
            )
        if bits != 4:
            raise CheckpointError(
                f"{self.f.path}: MatMulNBits {node.name!r} has bits={bits}; edgesmith maps 4-bit MatMulNBits only"
                " — compile the fp16/fp32 ONNX export or the Hugging Face checkpoint instead"
            )
        if block < 32 or block % 32 or k % 32:
            raise CheckpointError(
                f"{self.f.path}: MatMulNBits {node.name!r} has block_size={block} (K={k}); edgesmith's int4 groups are 32"
                " wide, so blocks of 32, 64, 128, ... map exactly and others do not — export with block_size 32"
            )
        blocks = -(-k // block)
        for name, shape in ((node.input[1], (n, blocks, block // 2)), (node.input[2], (n, blocks))):
            if not self.f.has(name) or int(np.prod(self.f.info(name).shape)) != int(np.prod(shape)):
                self.fail(f"{where}: MatMulNBits {node.name!r} input {name!r} is not a stored tensor of {list(shape)} elements")
        return LinearNode(node.name, "MatMulNBits", node.output[0], node.input[1], k, n, scales=node.input[2], block_size=block)

    def _zero_points_are_8(self, name: str, n: int, k: int, block: int) -> bool:
        """Zero points that are all 8 are the default written out: keep them (read once, small)."""
        if not self.f.has(name):
            return False
        zp = self.f.read(name)
        blocks = -(-k // block)
        if zp.dtype == np.uint8:  # two 4-bit zero points a byte, low nibble first, rows padded
            zp = np.stack([zp & 0xF, zp >> 4], axis=-1).reshape(n, -1)[:, :blocks]
        return zp.size == n * blocks and bool(np.all(zp.astype(np.float64) == 8))

    def norm_weight(self, node, index: int, where: str) -> str:
        w = node.input[index] if len(node.input) > index else ""
        if not self.f.has(w):
            self.fail(f"{where}: {self.describe(node)} has no stored scale weight")
        self.eps.add(float(attrs(node).get("epsilon", 1e-5)))
        return w

    # --------------------------------------------------------- the path

    def run(self) -> Phi3Graph:
        self.eps: set[float] = set()
        emb, h = self.embedding()
        # The embedding feeds layer 0's input norm and, as the residual, its post-attention norm.
        first = [u for u in self.users(h) if u.op_type == "SimplifiedLayerNormalization"]
        if len(first) != 1:
            found = ", ".join(self.describe(u) for u in self.users(h)) or "nothing"
            self.fail(f"expected one SimplifiedLayerNormalization to read the embedding, found {found}")
        first = first[0]
        norm, stream, delta = first, h, None
        layers = []
        while True:
            where = f"layer {len(layers)}"
            normed, stream = self.residual_norm(norm, stream, delta, where)
            users = self.users(normed)
            lm = [u for u in users if u.op_type in LINEAR_OPS and self._feeds_logits(u)]
            if lm:
                if len(users) != 1:
                    self.fail(f"the final norm's output {normed!r} also feeds {', '.join(self.describe(u) for u in users if u is not lm[0])}")
                final_norm = self._weight_of(norm)
                lm_head = self.linear(lm[0], normed, "lm_head")
                self._visit_logits(lm[0])
                break
            layer, norm, stream, delta = self.layer(norm, normed, stream, where)
            layers.append(layer)
        if not layers:
            self.fail("no decoder layer between the embedding and lm_head")
        graph = Phi3Graph(emb, layers, final_norm, lm_head, self.eps)
        self.link_embedding(graph)
        self.check_rest()
        self.rope_tables(graph)
        return graph

    def _weight_of(self, norm) -> str:
        return norm.input[2] if norm.op_type == "SkipSimplifiedLayerNormalization" else norm.input[1]

    def embedding(self) -> tuple[Embedding, str]:
        users = self.users("input_ids")  # the embedding, and perhaps Shape nodes of the mask plumbing
        gathers = [u for u in users if u.op_type in ("Gather", "GatherBlockQuantized")]
        if len(gathers) != 1:
            found = ", ".join(self.describe(u) for u in users) or "nothing"
            self.fail(f"expected one Gather over the embedding to read 'input_ids', found {found}")
        node = gathers[0]
        self.visit(node, node.output[0])
        if node.op_type == "Gather":
            if node.input[1] != "input_ids" or not self.f.has(node.input[0]) or attrs(node).get("axis", 0) != 0:
                self.fail(f"{self.describe(node)} is not a row lookup in a stored embedding table")
            return Embedding(node.name, node.input[0]), node.output[0]
        a = attrs(node)
        data = node.input[0]
        if data in self.producer and self.producer[data].op_type == "Reshape":  # tied: lm_head's codes, reshaped
            reshape = self.producer[data]
            self.visited.add(id(reshape))
            data = reshape.input[0]
        if (a.get("bits", 4) != 4 or a.get("gather_axis", 0) != 0 or a.get("quantize_axis", 1) != 1
                or (len(node.input) > 3 and node.input[3]) or not self.f.has(data)):
            self.fail(f"{self.describe(node)} is not a 4-bit row lookup with default zero points")
        block = a.get("block_size", 128)
        if block % 32:
            raise CheckpointError(f"{self.f.path}: GatherBlockQuantized {node.name!r} has block_size={block}; edgesmith maps blocks of 32, 64, 128, ...")
        return Embedding(node.name, data, scales=node.input[2], block_size=block), node.output[0]

    def residual_norm(self, norm, stream: str, delta: str | None, where: str) -> tuple[str, str]:
        """(normed output, residual stream after it). Skip norms add `delta` to the stream first."""
        if norm.op_type == "SimplifiedLayerNormalization":
            if delta is not None or norm.input[0] != stream:
                self.fail(f"{where}: {self.describe(norm)} does not normalize the residual stream")
            self.norm_weight(norm, 1, where)
            self.visit(norm, norm.output[0])
            return norm.output[0], stream
        if norm.op_type != "SkipSimplifiedLayerNormalization":
            self.fail(f"{where}: {self.describe(norm)} where an RMSNorm belongs")
        if delta is None:  # the first norm with a skip input has nothing to add yet
            self.fail(f"{where}: {self.describe(norm)} adds a second input to the embedding")
        if sorted(norm.input[:2]) != sorted([stream, delta]) or (len(norm.input) > 3 and norm.input[3]):
            self.fail(f"{where}: {self.describe(norm)} adds {list(norm.input[:2])}, not the residual stream and the block's output")
        self.norm_weight(norm, 2, where)
        outs = list(norm.output) + [""] * 4
        self.visit(norm, outs[0], outs[3])
        return outs[0], outs[3]

    def layer(self, norm, normed: str, stream: str, where: str):
        input_norm = self._weight_of(norm)
        users = self.users(normed)
        if not users or any(u.op_type not in LINEAR_OPS for u in users):
            found = ", ".join(self.describe(u) for u in users) or "nothing"
            self.fail(f"{where}: the input norm's output {normed!r} feeds {found}, not only q/k/v projections")
        qkv_nodes = {u.output[0]: self.linear(u, normed, where + " q/k/v") for u in users}
        attn, q_k_v, rotary = self.attention(qkv_nodes, where)
        qkv = [qkv_nodes[t] for t in q_k_v]
        o = self.linear(self.only_user(attn.output[0], LINEAR_OPS, where + " o_proj"), attn.output[0], where + " o_proj")
        post = self.only_user(o.out, ("SkipSimplifiedLayerNormalization",), where + " post-attention norm")
        normed2, stream2 = self.residual_norm(post, stream, o.out, where)
        gate_up, gate_out, up_out = self.mlp_in(normed2, where)
        down_in = self.silu_mul(gate_out, up_out, where)
        down_node = self.only_user(down_in, LINEAR_OPS, where + " down_proj")
        down = self.linear(down_node, down_in, where + " down_proj")
        nxt = self.only_user(down_node.output[0], ("SkipSimplifiedLayerNormalization",), where + " after down_proj")
        layer = Layer(input_norm, self._weight_of(post), qkv, o, gate_up, down, *self._attention_info(attn, rotary))
        return layer, nxt, stream2, down_node.output[0]

    def attention(self, qkv_nodes: dict, where: str):
        """The attention node reading these projections: (node, [q, k, v] or [qkv] source tensors, rotary nodes)."""
        rotary = []
        sources = {}
        for t in qkv_nodes:
            users = self.users(t)
            if len(users) == 1 and users[0].op_type == "RotaryEmbedding":
                rot = users[0]
                rotary.append(rot)
                self.visit(rot, rot.output[0])
                sources[rot.output[0]] = t
            else:
                sources[t] = t
        attn_nodes = {id(u): u for s in sources for u in self.users(s)}
        if len(attn_nodes) != 1:
            self.fail(f"{where}: the q/k/v projections feed {len(attn_nodes)} nodes, not one attention")
        attn = next(iter(attn_nodes.values()))
        if attn.op_type not in ATTENTION_OPS or attn.domain != MS:
            self.fail(f"{where}: {self.describe(attn)} where GroupQueryAttention or MultiHeadAttention belongs")
        ins = list(attn.input) + [""] * 12
        packed = attn.op_type == "GroupQueryAttention" and not ins[1] and not ins[2]
        wanted = [ins[0]] if packed else ins[:3]
        if sorted(wanted) != sorted(sources):
            self.fail(f"{where}: {self.describe(attn)} reads {wanted} where the q/k/v projections are {sorted(sources)}")
        if attn.op_type == "MultiHeadAttention" and ins[3]:
            self.fail(f"{where}: {self.describe(attn)} adds a q/k/v bias (Phi-3 has none)")
        if attn.op_type == "GroupQueryAttention" and any(ins[9:12]):
            self.fail(f"{where}: {self.describe(attn)} takes position_ids/attention_bias/head_sink, which Phi-3's graph does not")
        rot_for = {r.output[0]: r for r in rotary}
        if packed and rotary or not packed and (ins[0] not in rot_for or ins[1] not in rot_for or ins[2] in rot_for):
            self.fail(f"{where}: rotary embedding is not applied to exactly q and k before {self.describe(attn)}")
        self.visit(attn, attn.output[0])
        return attn, [sources[s] for s in wanted], [rot_for[s] for s in wanted if s in rot_for]

    def _attention_info(self, attn, rotary) -> tuple[dict, dict]:
        a = attrs(attn)
        info = {"op": attn.op_type, "node": attn.name, "num_heads": a.get("num_heads"),
                "kv_num_heads": a.get("kv_num_heads"), "scale": a.get("scale", 0.0),
                "local_window_size": a.get("local_window_size", -1), "softcap": a.get("softcap", 0.0)}
        if attn.op_type == "GroupQueryAttention":
            if not a.get("do_rotary", 0):
                self.fail(f"{self.describe(attn)} applies no rotary embedding (do_rotary=0)")
            rot = {"node": attn.name, "interleaved": a.get("rotary_interleaved", 0), "dim": 0, "scale": 1.0,
                   "cos": attn.input[7], "sin": attn.input[8], "positions": "seqlens"}
        else:
            ra = [attrs(r) for r in rotary]
            if ra[0] != ra[1] or rotary[0].input[1:4] != rotary[1].input[1:4]:
                self.fail(f"q and k are rotated differently ({rotary[0].name!r}, {rotary[1].name!r})")
            r = rotary[0]
            rot = {"node": r.name, "interleaved": ra[0].get("interleaved", 0), "dim": ra[0].get("rotary_embedding_dim", 0),
                   "scale": ra[0].get("scale", 1.0), "cos": r.input[2], "sin": r.input[3], "positions": r.input[1]}
            if ra[0].get("is_packed_batching", 0):
                self.fail(f"{self.describe(r)} uses packed batching")
        return info, rot

    def mlp_in(self, normed: str, where: str) -> tuple[list[LinearNode], str, str]:
        """gate and up: two linears, or one packed [gate; up] linear split in halves along its
        output (the builder's fuse_mlp_gate_up). Returns (linears, gate output, up output)."""
        users = self.users(normed)
        if len(users) == 1 and users[0].op_type in LINEAR_OPS:
            fused = self.linear(users[0], normed, where + " gate_up_proj")
            gate_out, up_out = self.split_halves(fused, where)
            return [fused], gate_out, up_out
        if len(users) != 2 or any(u.op_type not in LINEAR_OPS for u in users):
            found = ", ".join(self.describe(u) for u in users) or "nothing"
            self.fail(f"{where}: the post-attention norm's output {normed!r} feeds {found}, not gate_proj and up_proj")
        a, b = users
        # gate is the one read twice (by the activation and by x * act(x)); up only by the product.
        gate_node = a if len(self.users(a.output[0])) > len(self.users(b.output[0])) else b
        up_node = b if gate_node is a else a
        gate = self.linear(gate_node, normed, where + " gate_proj")
        up = self.linear(up_node, normed, where + " up_proj")
        return [gate, up], gate.out, up.out

    def split_halves(self, fused: LinearNode, where: str) -> tuple[str, str]:
        """The Split of a packed gate_up output into [gate | up] along the last axis, equal halves."""
        split = self.only_user(fused.out, ("Split",), where + " gate_up_proj")
        a = attrs(split)
        sizes = None
        if len(split.input) > 1 and split.input[1]:
            sizes = [int(x) for x in self.f.read(split.input[1]).reshape(-1)] if self.f.has(split.input[1]) else None
        elif a.get("num_outputs", len(split.output)) == 2 and fused.n % 2 == 0:
            sizes = [fused.n // 2] * 2
        if (split.domain not in ("", "ai.onnx") or a.get("axis", 0) not in (-1, 2) or len(split.output) != 2
                or sizes != [fused.n // 2, fused.n // 2] or fused.n % 2):
            self.fail(f"{where}: {self.describe(split)} does not cut gate_up_proj's {fused.n} outputs into two equal"
                      " halves along the last axis")
        self.visit(split, *split.output)
        return split.output[0], split.output[1]

    def silu_mul(self, g: str, u: str, where: str) -> str:
        """g * Sigmoid(g) * u (gate_proj's and up_proj's outputs), as Sigmoid + Mul + Mul; returns the product."""
        users = self.users(g)
        sig = [x for x in users if x.op_type == "Sigmoid"]
        mul = [x for x in users if x.op_type == "Mul"]
        if len(users) != 2 or len(sig) != 1 or len(mul) != 1:
            self.fail(f"{where}: gate_proj's output feeds {', '.join(self.describe(x) for x in users)}, not SiLU (Sigmoid and Mul)")
        sig, act = sig[0], mul[0]
        if sorted(act.input) != sorted([g, sig.output[0]]):
            self.fail(f"{where}: {self.describe(act)} is not gate * Sigmoid(gate)")
        prod = self.only_user(act.output[0], ("Mul",), where + " SiLU(gate) * up")
        if sorted(prod.input) != sorted([act.output[0], u]) or len(self.users(u)) != 1:
            self.fail(f"{where}: {self.describe(prod)} is not SiLU(gate) * up")
        self.visit(sig, sig.output[0])
        self.visit(act, act.output[0])
        self.visit(prod, prod.output[0])
        return prod.output[0]

    def _feeds_logits(self, node) -> bool:
        out = node.output[0]
        if out == "logits":
            return True
        users = self.users(out)
        return len(users) == 1 and users[0].op_type == "Cast" and users[0].output[0] == "logits"

    def _visit_logits(self, node) -> None:
        if node.output[0] != "logits":
            cast = self.users(node.output[0])[0]
            self.visit(cast)

    def link_embedding(self, graph: Phi3Graph) -> None:
        e, lm = graph.embedding, graph.lm_head
        e.shared_with_lm_head = lm.int4 and e.scales is not None and e.weight == lm.weight and e.scales == lm.scales
        if e.scales is not None and not e.shared_with_lm_head and self.f.info(e.weight).shape[0] != lm.n:
            self.fail("the int4 embedding's rows differ from lm_head's outputs")

    def check_rest(self) -> None:
        """Every node we did not map must stay off the hidden state (mask and position plumbing)."""
        for node in self.g.node:
            if id(node) in self.visited:
                continue
            touched = [i for i in node.input if i in self.hidden]
            if touched:
                self.fail(f"{self.describe(node)} reads the hidden state ({touched[0]!r}) and is an op edgesmith does not map")
        names = {o.name for o in self.g.output}
        if "logits" not in names:
            self.fail("the graph has no 'logits' output")

    def rope_tables(self, graph: Phi3Graph) -> None:
        """The cos/sin tensors: one pair for all layers; initializers, or an If choosing longrope's."""
        pairs = {(l.rotary["cos"], l.rotary["sin"]) for l in graph.layers}
        if len(pairs) != 1:
            self.fail(f"the layers read {len(pairs)} different cos/sin caches; Phi-3 shares one")
        cos, sin = graph.cos_sin = pairs.pop()
        if self.f.has(cos) and self.f.has(sin):
            return
        node = self.producer.get(cos)
        if node is None or node.op_type != "If" or list(node.output[:2]) != [cos, sin]:
            self.fail(f"cos/sin caches {cos!r}, {sin!r} are neither stored nor chosen by an If")
        cond = self.producer.get(node.input[0])
        threshold = None
        if cond is not None and cond.op_type == "Greater" and self.f.has(cond.input[1]):
            threshold = int(self.f.read(cond.input[1]).reshape(-1)[0])
        branches = {a.name: a.g for a in node.attribute if a.type == a.GRAPH}
        tables = {}
        for key, branch in (("long", "then_branch"), ("short", "else_branch")):
            outs = [o.name for o in branches[branch].output] if branch in branches else []
            if len(outs) != 2 or not all(self.f.has(o) for o in outs):
                self.fail(f"the longrope If {node.name!r} does not return two stored tables in its {branch}")
            tables[key] = tuple(outs)
        if threshold is None:
            self.fail(f"the longrope If {node.name!r} does not switch on 'total length > constant'")
        graph.longrope = {"threshold": threshold, **tables}


def match_phi3(f: OnnxFile) -> Phi3Graph:
    return _Walk(f).run()
