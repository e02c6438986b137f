"""The mapping database: who holds what, and what was derived from what.

Every capability slot is an ``ObjectCap`` node and every memory mapping a
``MemoryMapping`` node (with its offset and size in the memory object). A node
made by ``map`` is a *child* of the node it was mapped from; ``grant`` moves a
node (the receiver's node takes the sender's place in the tree, as L4_MAP_ITEM_GRANT does:
https://l4re.org/doc/group__l4__msgitem__api.html);
``unmap`` revokes recursively. Fiasco keeps object caps flat and only memory
hierarchical; this model keeps a derivation tree for both, so revoking a cap
you handed out also revokes what the receiver handed on (docs/violations.md V8;
the capability derivation tree of the seL4 Reference Manual,
https://sel4.systems/Info/Docs/seL4-manual-latest.pdf). ``MappingDb`` is pure:
it knows nothing about processes or fds.

Invariants:
- a ``(space, kind, index)`` key names at most one live node;
- a child's rights are a subset of its parent's at the time it was made, and
  rights reductions (``reduce``) propagate to the whole subtree;
- a removed node is detached from its parent and has no children.
"""
from __future__ import annotations

import dataclasses
import enum
import itertools
from collections.abc import Iterator
from typing import Any, ClassVar, Generic, TypeVar


class Kind(enum.Enum):
    OBJECT = "obj"
    MEMORY = "mem"

    # Members are singletons compared by identity: hash them by identity too (in C), not by name (a Python
    # call in every capability lookup, whose key holds a Kind).
    __hash__ = object.__hash__


Key = tuple[int, Kind, int]  # (space id, kind, slot index or virtual address)
Obj = TypeVar("Obj")

_ids = itertools.count(1)


@dataclasses.dataclass(eq=False)
class Node(Generic[Obj]):
    """One node: ``obj`` held by ``space`` at ``index`` with ``rights`` (an ``ObjectCap`` or a
    ``MemoryMapping``; ``kind`` says which)."""

    space: int
    index: int
    obj: Obj
    rights: int
    parent: Node[Obj] | None = None
    children: list[Node[Obj]] = dataclasses.field(default_factory=list)
    live: bool = True
    id: int = dataclasses.field(default_factory=lambda: next(_ids))
    kind: ClassVar[Kind]

    @property
    def key(self) -> Key:
        return (self.space, self.kind, self.index)

    @property
    def offset(self) -> int:
        return 0

    @property
    def size(self) -> int:
        return 0

    def subtree(self) -> Iterator[Node[Obj]]:
        """This node and every node derived from it, parents before children."""
        stack: list[Node[Obj]] = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))

    def derive(self, space: int, index: int, rights: int, *, offset: int = 0, size: int = 0,
               parent: Node[Obj] | None = None) -> Node[Obj]:
        """A node like this one at ``(space, index)``: same object, ``rights`` (and for memory the range)."""
        raise NotImplementedError


@dataclasses.dataclass(eq=False)
class ObjectCap(Node[Obj]):
    """A capability slot: ``obj`` at slot ``index`` of ``space``'s object space; ``rights`` are
    ``CapRights`` bits."""

    kind: ClassVar[Kind] = Kind.OBJECT

    def derive(self, space: int, index: int, rights: int, *, offset: int = 0, size: int = 0,
               parent: Node[Obj] | None = None) -> ObjectCap[Obj]:
        return ObjectCap(space, index, self.obj, rights, parent=parent)


@dataclasses.dataclass(eq=False)
class MemoryMapping(Node[Obj]):
    """Memory at virtual address ``index`` of ``space``: bytes ``offset .. offset+size`` of the memory
    object ``obj``; ``rights`` are ``MemRights`` bits."""

    mem_offset: int = 0
    mem_size: int = 0
    kind: ClassVar[Kind] = Kind.MEMORY

    @property
    def offset(self) -> int:
        return self.mem_offset

    @property
    def size(self) -> int:
        return self.mem_size

    def derive(self, space: int, index: int, rights: int, *, offset: int = 0, size: int = 0,
               parent: Node[Obj] | None = None) -> MemoryMapping[Obj]:
        return MemoryMapping(space, index, self.obj, rights, parent=parent, mem_offset=offset or self.mem_offset,
                             mem_size=size or self.mem_size)


class MappingDb:
    def __init__(self) -> None:
        self._nodes: dict[Key, Node[Any]] = {}
        #: ``node_at((space, kind, index))``: the node at a key or None, one C call (the kernel's capability
        #: lookup on every syscall); the dict is never replaced, so the bound method stays valid
        self.node_at = self._nodes.get
        self._spaces: dict[int, dict[Key, Node[Any]]] = {}

    # -- lookup ---------------------------------------------------------------
    def get(self, space: int, kind: Kind, index: int) -> Node[Any] | None:
        return self._nodes.get((space, kind, index))

    def cap(self, space: int, slot: int) -> ObjectCap[Any] | None:
        """The capability in ``space``'s slot ``slot``."""
        node = self._nodes.get((space, Kind.OBJECT, slot))
        return node if isinstance(node, ObjectCap) else None

    def memory(self, space: int) -> list[MemoryMapping[Any]]:
        """``space``'s memory mappings, by address."""
        return [n for n in self.in_space(space, Kind.MEMORY) if isinstance(n, MemoryMapping)]

    def in_space(self, space: int, kind: Kind | None = None) -> list[Node[Any]]:
        return sorted(
            (n for n in self._spaces.get(space, {}).values() if kind is None or n.kind == kind),
            key=lambda n: (n.kind.value, n.index),
        )

    def count(self, space: int, kind: Kind) -> int:
        """How many nodes of ``kind`` ``space`` holds (what a task's budget bounds)."""
        return sum(1 for key in self._spaces.get(space, {}) if key[1] is kind)

    def holders(self, obj: Any) -> list[Node[Any]]:
        return [n for n in self._nodes.values() if n.obj is obj]

    def __len__(self) -> int:
        return len(self._nodes)

    # -- mutation -------------------------------------------------------------
    def insert_root(self, space: int, kind: Kind, index: int, obj: Any, rights: int,
                    *, offset: int = 0, size: int = 0) -> tuple[Node[Any], list[Node[Any]]]:
        """A node with no parent (what the kernel creates: new objects, boot memory).

        Returns the new node and the nodes removed because the slot was occupied.
        """
        removed = self._clear_slot(space, kind, index)
        node: Node[Any] = (ObjectCap(space, index, obj, rights) if kind is Kind.OBJECT else
                           MemoryMapping(space, index, obj, rights, mem_offset=offset, mem_size=size))
        self._add(node)
        return node, removed

    def map(self, src: Node[Any], space: int, index: int, rights: int,
            *, offset: int = 0, size: int = 0) -> tuple[Node[Any], list[Node[Any]]]:
        """Derive a child of ``src`` at ``(space, index)`` with ``rights`` (already intersected).

        A slot that is occupied is emptied first (with its subtree), as Fiasco
        drops the old cap. Node[Any] a node onto itself is a no-op.
        """
        if not src.live:
            raise ValueError("map from a removed node")
        if src.space == space and src.index == index:
            return src, []
        removed = self._clear_slot(space, src.kind, index)
        node = src.derive(space, index, rights, offset=offset, size=size, parent=src)
        src.children.append(node)
        self._add(node)
        return node, removed

    def grant(self, src: Node[Any], space: int, index: int, rights: int) -> tuple[Node[Any], list[Node[Any]]]:
        """Move ``src`` to ``(space, index)``; the new node inherits parent and children."""
        if not src.live:
            raise ValueError("grant from a removed node")
        if src.space == space and src.index == index:
            return src, []
        removed = self._clear_slot(space, src.kind, index)
        node = src.derive(space, index, rights, parent=src.parent)
        node.children = src.children
        for child in node.children:
            child.parent = node
        if src.parent is not None:
            siblings = src.parent.children
            siblings[siblings.index(src)] = node
        self._drop(src)
        src.children, src.parent, src.live = [], None, False
        self._add(node)
        if rights != src.rights:
            self.reduce(node, src.rights & ~rights, include_self=False)
        return node, removed

    def unmap(self, node: Node[Any], *, include_self: bool) -> list[Node[Any]]:
        """Remove everything derived from ``node`` (and ``node`` itself if asked).

        Returns the removed nodes, parents before children.
        """
        if not node.live:
            return []
        if include_self:
            removed = list(node.subtree())
            if node.parent is not None:
                node.parent.children.remove(node)
        else:
            removed = [n for child in node.children for n in child.subtree()]
            node.children = []
        for n in removed:
            self._drop(n)
            n.live = False
        for n in removed:
            n.children = []
            n.parent = None
        return removed

    def reduce(self, node: Node[Any], strip: int, *, include_self: bool) -> list[Node[Any]]:
        """Strip the ``strip`` bits from the subtree (L4 unmap without the R/RO bit)."""
        changed = []
        for n in node.subtree():
            if n is node and not include_self:
                continue
            if n.rights & strip:
                n.rights &= ~strip
                changed.append(n)
        return changed

    def delete_object(self, obj: Any) -> list[Node[Any]]:
        """Empty every slot that refers to ``obj`` (unmap with L4_FP_DELETE_OBJ + D)."""
        removed: list[Node[Any]] = []
        for node in [n for n in self._nodes.values() if n.obj is obj and n.live]:
            if node.live:
                removed.extend(self.unmap(node, include_self=True))
        return removed

    def remove_space(self, space: int) -> list[Node[Any]]:
        """Task destruction: unmap everything in ``space`` with a full mask, recursively."""
        removed: list[Node[Any]] = []
        for node in list(self._spaces.get(space, {}).values()):
            if node.live:
                removed.extend(self.unmap(node, include_self=True))
        return removed

    def _add(self, node: Node[Any]) -> None:
        self._nodes[node.key] = node
        self._spaces.setdefault(node.space, {})[node.key] = node

    def _drop(self, node: Node[Any]) -> None:
        if self._nodes.get(node.key) is node:
            del self._nodes[node.key]
            del self._spaces[node.space][node.key]

    def _clear_slot(self, space: int, kind: Kind, index: int) -> list[Node[Any]]:
        old = self._nodes.get((space, kind, index))
        return self.unmap(old, include_self=True) if old is not None else []
