"""One YAML loader for every file a user controls, with a budget on alias expansion.

`yaml.safe_load` never runs code, but it happily builds a "billion laughs" document: nine anchors each
referring nine times to the previous one take a few hundred bytes to write and expand to 9**9 values once
something walks them (pydantic validating `variables: dict[str, Any]`, a JSON payload to Temporal, a merge
key `<<:` that PyYAML flattens eagerly). So before anything is constructed, `load_yaml` composes the node
graph, counts the alias references and the nodes the document has once every alias is expanded, and
refuses it past a small budget, naming the file. Recursive aliases (`&a [*a]`) are refused as well: nothing
Ferry reads is a cyclic graph, and a cycle would send every consumer into infinite recursion.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

# No configuration or kustomization Ferry reads comes near these; a bomb exceeds them within its first levels.
MAX_ALIASES = 1_000
MAX_NODES = 100_000

_Loader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # same node graph, composed in C when available


class YamlBudgetError(yaml.YAMLError):
    """A document refused before construction: too many aliases, too many expanded nodes, or an alias cycle.

    A subclass of yaml.YAMLError so that every caller that already handles invalid YAML handles this too.
    """


class _Budget:
    """Expanded-size accounting over one stream's node graph; each shared node is measured once."""

    def __init__(self, where: str, max_aliases: int, max_nodes: int) -> None:
        self.where = where
        self.max_aliases = max_aliases
        self.max_nodes = max_nodes
        self.aliases = 0
        self.nodes = 0
        self._sizes: dict[int, int] = {}  # id(node) -> nodes it stands for, aliases expanded
        self._open: set[int] = set()  # nodes being measured: meeting one again is a cycle

    def add_document(self, node: Node) -> None:
        """Account for one document; raise YamlBudgetError as soon as a budget is exceeded."""
        self.nodes += self._size(node)
        self._check_nodes()

    def _size(self, node: Node) -> int:
        key = id(node)
        if key in self._open:
            raise YamlBudgetError(f"{self.where}: a YAML alias refers to the node that contains it (recursive)")
        if key in self._sizes:  # a second parent: this edge is an alias
            self.aliases += 1
            if self.aliases > self.max_aliases:
                raise YamlBudgetError(
                    f"{self.where}: more than {self.max_aliases} YAML alias references; refused (alias bomb?)"
                )
            return self._sizes[key]
        self._open.add(key)
        size = 1 + sum(self._size(child) for child in _children(node))
        self._open.discard(key)
        self._sizes[key] = size
        if size > self.max_nodes:
            self._fail(size)
        return size

    def _check_nodes(self) -> None:
        if self.nodes > self.max_nodes:
            self._fail(self.nodes)

    def _fail(self, size: int) -> None:
        raise YamlBudgetError(
            f"{self.where}: the YAML expands to more than {self.max_nodes} values once its aliases are resolved "
            f"({size} and counting); refused (alias bomb?)"
        )


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _documents(text: str | bytes, where: str, max_aliases: int, max_nodes: int, *, single: bool) -> list[Any]:
    budget = _Budget(where, max_aliases, max_nodes)
    loader = _Loader(text)
    try:
        if single:
            node = loader.get_single_node()
            nodes = [node] if node is not None else []
        else:
            nodes = []
            while loader.check_node():
                nodes.append(loader.get_node())
        for node in nodes:
            budget.add_document(node)
        return [loader.construct_document(node) for node in nodes]
    except RecursionError:
        raise YamlBudgetError(f"{where}: the YAML is nested too deeply to read; refused") from None
    finally:
        loader.dispose()


def load_yaml(text: str | bytes, where: str, *, max_aliases: int = MAX_ALIASES, max_nodes: int = MAX_NODES) -> Any:
    """The one document of `text` (None when empty), as yaml.safe_load; YamlBudgetError names `where`."""
    docs = _documents(text, where, max_aliases, max_nodes, single=True)
    return docs[0] if docs else None


def load_yaml_all(
    text: str | bytes, where: str, *, max_aliases: int = MAX_ALIASES, max_nodes: int = MAX_NODES
) -> list[Any]:
    """Every document of a `---`-separated stream, as list(yaml.safe_load_all); the budget covers the stream."""
    return _documents(text, where, max_aliases, max_nodes, single=False)
