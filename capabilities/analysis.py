"""Static analysis of a system image before boot: reach, authority closure, information flow, lint.

capDL-tool's ``--analysis`` (https://github.com/seL4/capdl, capDL-tool) done for L4Re's
authority model (a task reaches exactly what its Ned-declared capabilities name,
https://l4re.org/doc/l4re_servers_ned.html): direct edges from the declared caps, a take-grant
saturation of what every task could ever obtain (docs/violations.md, case V24), the transitive
information-flow closure, and lint findings for fail-open declarations (V23). Pure: an ``Image``
in, values out.

Rules (what kernel_model/kernel.py and invoke.py enforce; the analysis must agree):

1. **Gate.** A task whose cap to gate G has c (SVR) *and* s can bind G: c routes its
   Kobject protocol to the gate, and ``gate.bind`` needs S. It is a *server* of G and receives
   every call through G. Every holder (servers too) is a *client*: its calls go to the bound
   server. c without s only reads the label (L4Re IPC gate,
   https://l4re.org/doc/group__l4__kernel__object__gate__api.html).
2. **Typed items.** A call carries caps client -> server, the reply server -> client. A cap is
   sent only by a task holding it; the receiver gets ``held ∩ requested``
   (``derive_cap_rights``; rights only shrink). S survives a call only if the client's gate cap
   has S (L4Re flexpage rights, https://l4re.org/doc/group__l4__fpage__api.html). On a reply S
   survives only if the *caller's* cap had S, as in Fiasco
   (``set_caller(this, rights)`` stores the W/S bits of the cap the caller used, and
   ``Obj_cap::deref`` of the reply cap returns ``caller_rights()``; fiasco thread-ipc.cpp,
   thread_object.cpp, receiver.cpp) and in ``Kernel._reply``. ``reply_s_from_caller=False``
   analyses the looser rule (replies always keep S).
3. **IRQ.** A holder with s binds (receives); any holder triggers (no right is checked):
   flow trigger-holder -> binder.
4. **Dataspace.** Holders map its memory, writable only with w (Moe's dataspace MAP): flow
   w-holder -> every other holder. Memory items sent over IPC give no more than the cap does.
5. **rom** (Moe's namespace): read-only boot modules; flow ``moe:rom`` -> every holder.
6. **Factory.** s creates objects for the holder only: no edge, no flow.

Assumptions (the take-grant worst case; program code is not read): every task sends any cap
it holds over every channel it has and always opens a receive window. Not modelled: the env
caps (log, parent, mem_alloc, task, thread) -- Moe is a trusted hub that never passes caps
between tasks, and tasks are assumed not to hand out their own thread -- and fresh objects
from factories or mem_alloc. Those add no information flow beyond the closure (their creator
is on a flow path to every receiver) but can add direct reach edges that ``can_reach`` misses.
"""
from __future__ import annotations

import dataclasses
import enum
from collections import deque
from collections.abc import Iterator, Mapping, Sequence

from capabilities.image import BUILTIN_OBJECTS, Image, ObjectType
from capabilities.kinds import BIND, IMAGE_KINDS, Flow
from capabilities.lint import LintRule, Severity
from capabilities.rights import CapRights, derive_cap_rights

ROM_NODE = "moe:rom"  #: the flow source of the boot modules (not a task name: it has a colon)
FULL = CapRights.parse("svr")


class EdgeKind(enum.Enum):
    CALL = "call"  #: client -> server through a gate (carries call items)
    REPLY = "reply"  #: server -> client (carries reply items; a flow, never an invocation)
    IRQ = "irq"  #: trigger holder -> binder
    MEMORY = "memory"  #: dataspace writer -> other holder
    ROM = "rom"  #: Moe's boot modules -> reader


@dataclasses.dataclass(frozen=True)
class Step:
    """One hop of a witness: ``source --kind--> target`` through object ``via``."""

    kind: EdgeKind
    source: str
    target: str
    via: str
    via_type: str
    rights: CapRights | None = None  #: for a cap transfer: the rights the target receives
    needs: tuple[Witness, ...] = ()  #: obtained caps this hop relies on


@dataclasses.dataclass(frozen=True)
class Witness:
    """Why a claim holds: a path from ``origin`` (declared holder, or flow source) to the subject."""

    claim: str
    origin: str
    steps: tuple[Step, ...] = ()
    origin_rights: CapRights | None = None  #: for a transfer: what the origin holds
    declared: str | None = None  #: no steps: the claim holds through this declared cap
    cost: int = dataclasses.field(default=0, compare=False)  #: hops, counting those of the needed witnesses

    def path(self) -> str:
        if not self.steps:
            return f"declared as cap {self.declared!r} of {self.origin}"
        out, rights = [self.origin], self.origin_rights
        for s in self.steps:
            note = f", now {s.rights.letters()}" if s.rights is not None and s.rights != rights else ""
            out.append(f" --{s.kind.value}--> {s.target} ({s.via_type} {s.via}{note})")
            rights = s.rights
        return "".join(out)

    def requirements(self) -> tuple[Witness, ...]:
        """The witnesses of every obtained cap the path uses, depth first, each once."""
        seen: dict[str, Witness] = {}

        def walk(w: Witness) -> None:
            for s in w.steps:
                for need in s.needs:
                    walk(need)
                    seen.setdefault(need.claim, need)
        walk(self)
        return tuple(seen.values())

    def __str__(self) -> str:
        lines = [f"{self.claim} via: {self.path()}" if self.steps else f"{self.claim}: {self.path()}"]
        lines += [f"  where {need.claim} via: {need.path()}" for need in self.requirements()]
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Holding:
    """A cap a task holds: declared (``cap`` is its name) or obtainable (``witness`` says how)."""

    task: str
    object: str
    rights: CapRights
    cap: str | None = None
    witness: Witness | None = None

    def __str__(self) -> str:
        if self.cap is not None:
            return f"{self.cap}={self.object}:{self.rights.letters()}"
        return f"{self.object}:{self.rights.letters()} (obtainable)"


@dataclasses.dataclass(frozen=True)
class Edge:
    """A direct edge: ``source`` can invoke, notify or write to ``target`` through ``object``."""

    kind: EdgeKind
    source: str
    target: str
    object: str
    object_type: str
    source_cap: Holding | None  #: None for ROM (the source is Moe)
    target_cap: Holding

    @property
    def key(self) -> tuple[EdgeKind, str, str, str]:
        return (self.kind, self.source, self.target, self.object)

    @property
    def declared(self) -> bool:
        return all(h.cap is not None for h in (self.source_cap, self.target_cap) if h is not None)

    def needs(self) -> tuple[Witness, ...]:
        return tuple(h.witness for h in (self.source_cap, self.target_cap) if h is not None and h.witness)

    def step(self, kind: EdgeKind | None = None, *, reverse: bool = False) -> Step:
        src, dst = (self.target, self.source) if reverse else (self.source, self.target)
        return Step(kind or self.kind, src, dst, self.object, self.object_type, None, self.needs())


class Analysis:
    """Everything the analysis knows about one image; computed once, queried many times.

    ``edges``: direct edges from declared caps only. ``derived_edges``: edges that appear only
    once tasks use caps they can obtain. ``findings``: ``lint(image)``.
    """

    def __init__(self, image: Image, *, reply_s_from_caller: bool = True):
        self.image = image
        self.reply_s_from_caller = reply_s_from_caller
        self.tasks = tuple(t.name for t in image.tasks)
        self.objects = tuple(o.name for o in image.objects) + tuple(BUILTIN_OBJECTS)
        self.types = {o.name: o.type for o in image.objects} | dict(BUILTIN_OBJECTS)
        self._declared = {t.name: tuple(Holding(t.name, c.object, c.rights, c.name) for c in t.caps)
                          for t in image.tasks}
        self.work = 0  #: inner-loop steps taken (tests check it grows linearly with the image)
        self._adjacency: dict[int, dict[str, list[Step]]] = {}
        self._held = self._saturate()
        self.edges = tuple(self._edges(self._declared))
        known = {e.key[:3] for e in self.edges}
        self.derived_edges = tuple(e for e in self._edges(self._held, per_pair=True) if e.key[:3] not in known)
        self.findings = tuple(lint(image))
        self._flows: dict[str, dict[str, Witness]] = {}

    # ----------------------------------------------------------------- queries
    def holdings(self, task: str) -> tuple[Holding, ...]:
        """Declared caps first, then every maximal obtainable one."""
        return tuple(self._held[task])

    def obtainable(self, task: str) -> dict[tuple[str, CapRights], Witness]:
        """(object, rights) -> witness, for what ``task`` can obtain beyond its declared caps.

        Rights are maximal: anything less (still with r) is obtainable too.
        """
        return {(h.object, h.rights): h.witness for h in self._held[task] if h.witness is not None}

    def can_obtain(self, task: str, obj: str, rights: CapRights = CapRights.R) -> Witness | None:
        for h in self._held[task]:
            if h.object == obj and h.rights.covers(rights):
                return h.witness or Witness(f"{task} holds {obj}:{h.rights.letters()}", task, declared=h.cap)
        return None

    def can_reach(self, a: str, b: str) -> Witness | None:
        """``a`` can call, notify or write to ``b`` directly, with a declared or an obtainable cap."""
        found = [e for e in self.edges + self.derived_edges if (e.source, e.target) == (a, b)]
        if not found:
            return None
        best = min(found, key=lambda e: sum(n.cost for n in e.needs()))  # declared first, then the cheapest
        return Witness(f"{a} can reach {b}", a, (best.step(),))

    def flows(self, a: str, b: str) -> Witness | None:
        """``a`` can influence ``b``, transitively (``a`` may be ``ROM_NODE``); None if not or a == b."""
        return self.influences(a).get(b) if a != b else None

    def influence_set(self, a: str) -> frozenset[str]:
        """Everyone ``a`` can influence (the keys of ``influences(a)``), without building witness paths.

        All sources at once: strongly connected components of the flow graph (declared and obtainable
        edges, replies included), then reachability over the condensed DAG as bit sets. Linear in the
        graph plus the size of the answer.
        """
        if not hasattr(self, "_reach"):
            self._reach = self._reachability()
        return self._reach.get(a, frozenset())

    def _reachability(self) -> dict[str, frozenset[str]]:
        succ: dict[str, set[str]] = {}
        for e in self.edges + self.derived_edges:
            self.work += 1
            succ.setdefault(e.source, set()).add(e.target)
            if e.kind is EdgeKind.CALL:
                succ.setdefault(e.target, set()).add(e.source)
        nodes = list(dict.fromkeys([ROM_NODE, *self.tasks, *succ, *(t for ts in succ.values() for t in ts)]))
        # Tarjan's algorithm, iteratively; components come out in reverse topological order
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        comp: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        comps: list[list[str]] = []
        for root in nodes:
            if root in index:
                continue
            work = [(root, iter(sorted(succ.get(root, ()))))]
            index[root] = low[root] = len(index)
            stack.append(root)
            on_stack.add(root)
            while work:
                node, it = work[-1]
                for nxt in it:
                    self.work += 1
                    if nxt not in index:
                        index[nxt] = low[nxt] = len(index)
                        stack.append(nxt)
                        on_stack.add(nxt)
                        work.append((nxt, iter(sorted(succ.get(nxt, ())))))
                        break
                    if nxt in on_stack:
                        low[node] = min(low[node], index[nxt])
                else:
                    work.pop()
                    if work:
                        low[work[-1][0]] = min(low[work[-1][0]], low[node])
                    if low[node] == index[node]:
                        members = []
                        while True:
                            m = stack.pop()
                            on_stack.discard(m)
                            comp[m] = len(comps)
                            members.append(m)
                            if m == node:
                                break
                        comps.append(members)
        bit = {n: 1 << i for i, n in enumerate(nodes)}
        reach = [0] * len(comps)  # everything reachable from the component, itself included if cyclic
        for c, members in enumerate(comps):  # successors' components come first
            mask = 0
            for m in members:
                for nxt in succ.get(m, ()):
                    self.work += 1
                    mask |= bit[nxt] | reach[comp[nxt]]
            reach[c] = mask
        out: dict[str, frozenset[str]] = {}
        for n in nodes:
            mask, found = reach[comp[n]] & ~bit[n], []
            while mask:  # set bits only: the cost is the size of the answer
                lowest = mask & -mask
                found.append(nodes[lowest.bit_length() - 1])
                mask ^= lowest
                self.work += 1
            out[n] = frozenset(found)
        return out

    def influences(self, a: str) -> dict[str, Witness]:
        """Everyone ``a`` can influence -> a shortest flow path (ties go to the object declared first)."""
        if a not in self._flows:
            self._flows[a] = self._bfs(a)
        return self._flows[a]

    # ---------------------------------------------------------------- closure
    def _saturate(self) -> dict[str, list[Holding]]:
        """Take-grant saturation in rounds; each round only uses what the previous one ended with.

        Per (task, object) only maximal rights are kept (a sender may always ask for less);
        declared caps stay, even when an obtainable one covers them.
        """
        held = {t: list(self._declared[t]) for t in self.tasks}
        index: dict[tuple[str, str], list[int]] = {}  # (task, object) -> rights held, for the cover test
        slots: dict[tuple[str, str], list[Holding]] = {}  # (task, object) -> its holdings
        order: dict[str, dict[int, Holding]] = {t: {} for t in self.tasks}  # a task's holdings, in order
        for t in self.tasks:
            for h in held[t]:
                index.setdefault((t, h.object), []).append(int(h.rights))
                slots.setdefault((t, h.object), []).append(h)
                order[t][id(h)] = h
        while True:
            offers: list[tuple[Holding, str, EdgeKind, str, bool, tuple[Witness, ...]]] = []
            for client, ccap, server, scap, gate in self._channels(held):
                call_s = CapRights.S in ccap.rights
                reply_s = call_s if self.reply_s_from_caller else True
                needs = tuple(h.witness for h in (ccap, scap) if h.witness is not None)
                offers += [(h, server, EdgeKind.CALL, gate, call_s, needs) for h in held[client]]
                offers += [(h, client, EdgeKind.REPLY, gate, reply_s, needs) for h in held[server]]
            grew = False  # cheapest witness first (stable: ties go to the object and task declared first)
            offers.sort(key=lambda o: _cost(o[0].witness) + 1 + sum(n.cost for n in o[5]))
            for h, receiver, kind, gate, keep_s, needs in offers:
                have = index.setdefault((receiver, h.object), [])
                bits = int(h.rights) if keep_s else int(h.rights) & ~int(CapRights.S)
                if any(x & bits == bits for x in have):
                    continue
                rights = derive_cap_rights(h.rights, FULL, partner_has_s=keep_s)
                if not rights:
                    continue
                src = h.witness or Witness("", h.task, origin_rights=h.rights)
                step = Step(kind, h.task, receiver, gate, ObjectType.GATE, rights, needs)
                claim = f"{receiver} obtains {h.object}:{rights.letters()}"
                cost = src.cost + 1 + sum(n.cost for n in needs)
                w = Witness(claim, src.origin, src.steps + (step,), src.origin_rights, cost=cost)
                # only this (task, object)'s holdings change: the task's list is rebuilt once per round
                slot = slots.setdefault((receiver, h.object), [])
                for o in slot:
                    if o.cap is None and rights.covers(o.rights):
                        del order[receiver][id(o)]
                slot[:] = [o for o in slot if o.cap is not None or not rights.covers(o.rights)]
                new = Holding(receiver, h.object, rights, None, w)
                slot.append(new)
                order[receiver][id(new)] = new
                have[:] = [int(o.rights) for o in slot]
                grew = True
                self.work += 1
            if not grew:
                return held
            for t in self.tasks:
                held[t] = list(order[t].values())

    def _channels(self, held: dict[str, list[Holding]]) -> Iterator[tuple[str, Holding, str, Holding, str]]:
        """(client, its gate cap, server, its gate cap, gate) for every client/server pair of tasks.

        Per pair, the client's first cap is used, plus its first cap with S if that is another
        one (S changes what the call carries); the server's first cap that can bind.
        """
        by_object = self._by_object(held)
        for gate in (o for o in self.objects if self.types[o] == ObjectType.GATE):
            hs = by_object.get(gate, [])
            servers: dict[str, Holding] = {}
            for h in hs:
                if h.rights.covers(BIND):
                    servers.setdefault(h.task, h)
            per_client: dict[str, list[Holding]] = {}
            for h in hs:
                per_client.setdefault(h.task, []).append(h)
            for client, caps in per_client.items():
                with_s = [h for h in caps if CapRights.S in h.rights]
                for ccap in caps[:1] + [h for h in with_s[:1] if h is not caps[0]]:
                    for server, scap in servers.items():
                        self.work += 1
                        if server != client:
                            yield client, ccap, server, scap, gate

    def _by_object(self, held: Mapping[str, Sequence[Holding]]) -> dict[str, list[Holding]]:
        """object -> its holdings, tasks in image order (one pass over all holdings)."""
        out: dict[str, list[Holding]] = {}
        for t in self.tasks:
            for h in held[t]:
                self.work += 1
                out.setdefault(h.object, []).append(h)
        return out

    # ------------------------------------------------------------------ edges
    def _edges(self, held: dict[str, list[Holding]] | dict[str, tuple[Holding, ...]], *,
               per_pair: bool = False) -> list[Edge]:
        """Every direct edge; per (kind, source, target, object) the first pair of caps (declared first).

        ``per_pair``: one edge per (kind, source, target), through the first object that gives it; an
        object whose holders play the same roles as an earlier object's adds nothing and is skipped
        (after saturation, a server's clients often all hold the same caps: this keeps the derived
        edges proportional to the task pairs, not to pairs x objects).
        """
        out: dict[tuple[EdgeKind, str, str, str] | tuple[EdgeKind, str, str], Edge] = {}
        signatures: set[tuple[str, frozenset[tuple[str, bool]]]] = set()

        def add(kind: EdgeKind, src: Holding | None, dst: Holding, obj: str) -> None:
            source = src.task if src is not None else ROM_NODE
            self.work += 1
            if source != dst.task:
                edge = Edge(kind, source, dst.task, obj, self.types[obj], src, dst)
                out.setdefault(edge.key[:3] if per_pair else edge.key, edge)

        by_object = self._by_object(held)
        for obj in self.objects:
            hs = by_object.get(obj, [])
            otype = self.types[obj]
            kind = IMAGE_KINDS[otype]
            if per_pair:
                signature = (otype, frozenset((h.task, kind.owns(h.rights)) for h in hs))
                self.work += len(hs)
                if signature in signatures:
                    continue
                signatures.add(signature)
            # the receiving side is filtered once per object, not once per holder
            if kind.flow is Flow.TO_OWNERS:
                owners = [h for h in hs if kind.owns(h.rights)]
                for h in hs:
                    for o in owners:
                        add(EdgeKind(kind.edge), h, o, obj)
            elif kind.flow is Flow.FROM_OWNERS:
                for o in [h for h in hs if kind.owns(h.rights)]:
                    for h in hs:
                        add(EdgeKind(kind.edge), o, h, obj)
            elif kind.flow is Flow.FROM_ROM:
                for h in hs:
                    add(EdgeKind(kind.edge), None, h, obj)
        return list(out.values())

    def _bfs(self, a: str) -> dict[str, Witness]:
        """Shortest flow paths from ``a``: over declared edges where they reach, else over all edges."""
        found: dict[str, tuple[Step, ...]] = {}
        for which, edges in enumerate((self.edges, self.edges + self.derived_edges)):
            adjacency = self._adjacency.get(which)
            if adjacency is None:  # built once per edge set, not once per query
                adjacency = self._adjacency[which] = {}
                for e in edges:
                    self.work += 1
                    adjacency.setdefault(e.source, []).append(e.step())
                    if e.kind is EdgeKind.CALL:
                        adjacency.setdefault(e.target, []).append(e.step(EdgeKind.REPLY, reverse=True))
            parent: dict[str, tuple[str, Step] | None] = {a: None}
            queue = deque([a])
            while queue:
                node = queue.popleft()
                for step in adjacency.get(node, ()):
                    self.work += 1
                    if step.target not in parent:
                        parent[step.target] = (node, step)
                        queue.append(step.target)
            paths: dict[str, tuple[Step, ...]] = {}
            for b in parent:
                if b not in found:
                    steps: list[Step] = []
                    node = b
                    while (link := parent[node]) is not None:
                        node, step = link
                        steps.append(step)
                    paths[b] = tuple(reversed(steps))
            for b, path in paths.items():
                found.setdefault(b, path)
        return {b: Witness(f"{a} can influence {b}", a, steps) for b, steps in found.items() if b != a}


def _cost(w: Witness | None) -> int:
    return 0 if w is None else w.cost


# ==================================================================== lint
@dataclasses.dataclass(frozen=True)
class Finding:
    rule: LintRule
    severity: Severity
    task: str | None  #: where to look: the task whose cap is at fault (None: the object itself)
    cap: str | None  #: that task's cap name
    object: str
    message: str

    def __str__(self) -> str:
        where = f"tasks.{self.task}.caps.{self.cap}" if self.task else f"objects.{self.object}"
        return f"{self.severity.name.lower()}[{self.rule.id}] {where}: {self.message}"


def lint(image: Image) -> list[Finding]:
    """Fail-open patterns in the declared caps, sorted by severity (errors first), then image order.

    Object-level rules (no server, no client, ...) name the object's first holder in image order.
    """
    found: list[Finding] = []
    types = {o.name: o.type for o in image.objects} | dict(BUILTIN_OBJECTS)
    holders: dict[str, list[tuple[str, str, CapRights]]] = {name: [] for name in types}
    for t in image.tasks:
        for c in t.caps:
            holders[c.object].append((t.name, c.name, c.rights))

    def add(rule: LintRule, who: tuple[str, str, CapRights] | None, obj: str, message: str) -> None:
        found.append(Finding(rule, rule.severity, who[0] if who else None, who[1] if who else None, obj, message))

    for obj, hs in holders.items():
        otype, tasks = types[obj], list(dict.fromkeys(h[0] for h in hs))
        if not hs:
            if obj not in BUILTIN_OBJECTS:
                add(LintRule.OBJECT_UNHELD, None, obj, f"{otype} {obj!r} is declared but no task holds a cap to it")
            continue
        kind = IMAGE_KINDS[otype]
        owners = [h for h in hs if kind.owns(h[2])]
        owner_tasks = list(dict.fromkeys(h[0] for h in owners))
        if kind.one_owner is not None and len(owner_tasks) > 1:
            rule = kind.one_owner
            for h in owners:
                if h[0] != owner_tasks[0]:
                    add(rule, h, obj, f"{h[0]} can bind {otype} {obj!r} as {owner_tasks[0]} can: "
                                      f"whoever binds last receives everything sent through it")
        for h in hs:
            if len(tasks) > 1 and CapRights.D in h[2] and (h[0] not in owner_tasks or kind.one_owner is None):
                add(LintRule.SHARED_DELETE, h, obj, f"d lets {h[0]} delete {otype} {obj!r} under "
                                                f"{', '.join(t for t in tasks if t != h[0])}")
        if kind.lint is not None:
            kind.lint(obj, hs, tasks, owners, owner_tasks, add)
    order = {t.name: i for i, t in enumerate(image.tasks)}
    rules = list(LintRule)
    return sorted(found, key=lambda f: (-f.severity, rules.index(f.rule), order.get(f.task or "", -1),
                                        f.cap or "", f.object))
