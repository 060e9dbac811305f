"""Physical plan: parallelism per node, exchanges, and operator chains.

A node is *chained* into its upstream (same subtask, direct calls) when it has a
single input with a forward exchange and the same parallelism. Every other edge
becomes a set of channels between subtasks, routed by an exchange.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sluice.errors import PlanError
from sluice.plan.logical import Edge, ExchangeKind, LogicalPlan, Node


@dataclass(eq=False)
class PhysicalEdge:
    edge: Edge
    src: PhysicalNode
    exchange: ExchangeKind
    chained: bool


@dataclass(eq=False)
class PhysicalNode:
    node: Node
    parallelism: int
    inputs: list[PhysicalEdge] = field(default_factory=list)

    @property
    def chained(self) -> bool:
        return len(self.inputs) == 1 and self.inputs[0].chained

    @property
    def name(self) -> str:
        return self.node.name


@dataclass
class PhysicalPlan:
    name: str
    nodes: list[PhysicalNode]

    def describe(self) -> str:
        """A readable listing of the plan (used by ``sluice plan`` and in errors)."""
        lines = [f"job {self.name!r}"]
        for pn in self.nodes:
            ins = ", ".join(
                f"{e.src.name}{'' if e.edge.tag == 'main' else '[' + e.edge.tag + ']'}"
                f" -{'chain' if e.chained else e.exchange}->"
                for e in pn.inputs
            )
            lines.append(f"  {pn.name} x{pn.parallelism}" + (f"  <= {ins}" if ins else ""))
        return "\n".join(lines)


def build_physical(plan: LogicalPlan, default_parallelism: int) -> PhysicalPlan:
    """Assign parallelism, resolve exchanges and decide chaining."""
    if default_parallelism < 1:
        raise PlanError(f"parallelism must be >= 1, got {default_parallelism}")
    phys: dict[int, PhysicalNode] = {}
    out: list[PhysicalNode] = []
    consumers: dict[int, int] = {}
    for node in plan.nodes:
        for e in node.inputs:
            consumers[e.src.id] = consumers.get(e.src.id, 0) + 1
    for node in plan.nodes:
        p = node.parallelism or default_parallelism
        if node.max_parallelism is not None:
            p = min(p, node.max_parallelism)
        pn = PhysicalNode(node, p)
        for e in node.inputs:
            src = phys[e.src.id]
            kind: ExchangeKind = e.exchange
            if kind == "forward" and src.parallelism != p:
                kind = "rebalance"
            if (
                kind == "hash"
                and src.parallelism == p
                and (p == 1 or src.node.partitioned_by == e.keys)
            ):
                kind = "forward"  # already partitioned that way
            chained = kind == "forward" and len(node.inputs) == 1 and src.parallelism == p
            pn.inputs.append(PhysicalEdge(e, src, kind, chained))
        phys[node.id] = pn
        out.append(pn)
    if not any(n.node.kind == "sink" for n in out):
        raise PlanError(
            f"flow {plan.name!r} has no sink: add one with stream.sink(...) "
            "(sl.sinks.collect() gathers results in memory)"
        )
    return PhysicalPlan(plan.name, out)
