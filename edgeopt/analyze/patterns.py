"""ONNX graph walking shared by analysis and the graph passes: node maps, and matchers for what ONNX Runtime fuses.

onnxscript rule sets (`edgeopt.passes.graph.rules`) match what graph.fuse rewrites itself. The patterns
here have no such rule: ONNX Runtime fuses them (attention, in its transformer optimizer, which graph.fuse
runs; Conv + activation, when it builds a session). One matcher each, used by graph.simplify and
graph.fuse as by analysis.
"""

from __future__ import annotations

from typing import Any

from edgeopt.artifact import node_name

# What ONNX Runtime (CPU) folds into FusedConv when the activation is the Conv's only consumer; measured
# with the installed onnxruntime: HardSwish, Elu and Softplus are left as they are.
CONV_ACTIVATIONS = frozenset(("Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid"))
_NONDETERMINISTIC = frozenset(("RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                               "Multinomial", "Bernoulli"))
_WALK_THROUGH = frozenset(("Cast", "Dropout", "Identity"))


def _foldable(n: Any) -> bool:
    """Whether a node could be computed ahead of time if all its inputs are constants."""
    return (n.op_type not in _NONDETERMINISTIC and n.domain in ("", "ai.onnx")
            and not any(a.type in (5, 10) for a in n.attribute))  # no If/Loop/Scan bodies


class GraphIndex:
    """Producer/consumer maps of a ModelProto's main graph, and the helpers every matcher uses."""

    def __init__(self, model: Any):
        g = model.graph
        self.nodes = list(g.node)
        self.names = [node_name(n, i) for i, n in enumerate(self.nodes)]
        self.position = {name: i for i, name in enumerate(self.names)}  # node name -> index
        self.inits = {i.name: i for i in g.initializer}
        self.consts = set(self.inits)
        self.folds: list[int] = []  # nodes computing only from constants (constant-foldable)
        for i, n in enumerate(self.nodes):  # file order is topological in a valid model
            if n.op_type == "Constant":
                self.consts.update(o for o in n.output if o)
            elif _foldable(n) and all(x in self.consts for x in n.input if x) and any(n.input):
                self.consts.update(o for o in n.output if o)
                self.folds.append(i)
        self.graph_outputs = {o.name for o in g.output}
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for i, n in enumerate(self.nodes):
            for o in n.output:
                if o:
                    self.producer[o] = i
            for x in n.input:
                if x:
                    self.consumers.setdefault(x, []).append(i)

    def op(self, i: int) -> str:
        return self.nodes[i].op_type

    def is_const(self, name: str) -> bool:
        return name in self.consts

    def prod(self, name: str) -> int | None:
        return self.producer.get(name)

    def users(self, i: int, k: int = 0) -> list[int]:
        n = self.nodes[i]
        return self.consumers.get(n.output[k], []) if k < len(n.output) else []

    def only_user(self, i: int, op: str | frozenset | tuple | None = None) -> int | None:
        """The single consumer of node i's first output (None if several, none, or a graph output)."""
        n = self.nodes[i]
        if not n.output or n.output[0] in self.graph_outputs:
            return None
        us = self.users(i)
        if len(us) != 1:
            return None
        u = us[0]
        if op is None or self.op(u) == op or (not isinstance(op, str) and self.op(u) in op):
            return u
        return None

    def const_and_var(self, i: int) -> tuple[str | None, str | None]:
        """(constant input, variable input) of a two-input node, or (None, None) if not that shape."""
        ins = [x for x in self.nodes[i].input if x]
        if len(ins) != 2:
            return None, None
        a, b = ins
        if self.is_const(a) and not self.is_const(b):
            return a, b
        if self.is_const(b) and not self.is_const(a):
            return b, a
        return None, None

    def const_value(self, name: str):
        """The numpy value of a constant tensor (None if not a constant or not loaded)."""
        import onnx

        if name in self.inits:
            try:
                return onnx.numpy_helper.to_array(self.inits[name])
            except Exception:  # external data not loaded
                return None
        i = self.producer.get(name)
        if i is not None and self.op(i) == "Identity":
            return self.const_value(self.nodes[i].input[0])
        if i is not None and self.op(i) == "Constant":
            for a in self.nodes[i].attribute:
                if a.name == "value" and a.HasField("t"):
                    return onnx.numpy_helper.to_array(a.t)
        return None


def _index(model: Any) -> GraphIndex:
    return model if isinstance(model, GraphIndex) else GraphIndex(model)


def find_attention(model: Any) -> list[list[str]]:
    """Attention blocks of a ModelProto's main graph (or of its GraphIndex): MatMul -> (Div|Mul)? ->
    (Add|Where mask)? -> Softmax -> MatMul, what ONNX Runtime's Attention fusion starts from.

    Returns one list of node names per block (QK MatMul, scale, mask, Softmax, AV MatMul). Casts,
    Dropouts and Identities between the steps are walked through.
    """
    g = _index(model)

    def up(name: str) -> int | None:
        i = g.prod(name)
        while i is not None and g.op(i) in _WALK_THROUGH:
            i = g.prod(g.nodes[i].input[0])
        return i

    def down(i: int) -> list[int]:
        users = g.users(i)
        while len(users) == 1 and g.op(users[0]) in _WALK_THROUGH:
            users = g.users(users[0])
        return users

    blocks = []
    for sm, node in enumerate(g.nodes):
        if node.op_type != "Softmax":
            continue
        chain = [sm]
        n = up(node.input[0])
        if n is not None and g.op(n) in ("Add", "Where"):
            chain.insert(0, n)
            ins = g.nodes[n].input
            scores = (up(i) for i in (ins[:2] if g.op(n) == "Add" else ins[1:2]))
            n = next((p for p in scores if p is not None and g.op(p) in ("Div", "Mul", "MatMul")), None)
        if n is not None and g.op(n) in ("Div", "Mul"):
            chain.insert(0, n)
            n = next((p for p in (up(i) for i in g.nodes[n].input) if p is not None and g.op(p) == "MatMul"), None)
        if n is None or g.op(n) != "MatMul":
            continue
        av = [u for u in down(sm) if g.op(u) == "MatMul"]
        if av:
            blocks.append([g.names[i] for i in [n, *chain, av[0]]])
    return blocks


def find_conv_activations(model: Any) -> list[list[str]]:
    """[Conv, activation] name pairs where the activation (CONV_ACTIVATIONS) is the Conv's only consumer:
    what ONNX Runtime fuses into FusedConv when it builds a session."""
    g = _index(model)
    pairs = []
    for i, n in enumerate(g.nodes):
        if n.op_type == "Conv":
            act = g.only_user(i, CONV_ACTIVATIONS)
            if act is not None:
                pairs.append([g.names[i], g.names[act]])
    return pairs
