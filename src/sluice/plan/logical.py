"""The logical plan: a DAG of operator nodes built by the Python API."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from sluice.connectors.base import Sink
    from sluice.operators.base import Operator
    from sluice.operators.source import SourceSpec

ExchangeKind = Literal["forward", "hash", "broadcast", "rebalance"]

#: Builds the operator instance of one subtask: ``factory(subtask, parallelism)``.
OperatorFactory = Callable[[int, int], "Operator"]


@dataclass(eq=False)
class Edge:
    """A data edge from ``src``'s output ``tag`` into a node."""

    src: Node
    tag: str = "main"
    exchange: ExchangeKind = "forward"
    keys: tuple[str, ...] = ()


@dataclass(eq=False)
class Node:
    """One operator of the logical plan."""

    id: int
    name: str
    kind: Literal["source", "operator", "sink"]
    inputs: list[Edge] = field(default_factory=list)
    factory: OperatorFactory | None = None
    source: SourceSpec | None = None
    sink: Sink | None = None
    parallelism: int | None = None
    max_parallelism: int | None = None
    #: Keys the node's input is hash-partitioned by (a following hash exchange
    #: on the same keys and parallelism is then a forward edge).
    partitioned_by: tuple[str, ...] | None = None

    def __repr__(self) -> str:
        return f"Node({self.id}, {self.name!r}, {self.kind})"


@dataclass
class LogicalPlan:
    """All nodes of a flow, in creation order (which is a topological order)."""

    name: str
    nodes: list[Node] = field(default_factory=list)

    def add(self, node: Node) -> Node:
        self.nodes.append(node)
        return node

    def new_id(self) -> int:
        return len(self.nodes)
