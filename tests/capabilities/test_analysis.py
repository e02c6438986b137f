"""capabilities.analysis and ``l4emu check``: reach, authority closure, flow and lint on a corpus of images.

Each image in analysis_images/ names its exact findings in header lines
``# finding: SEVERITY RULE WHERE`` (or ``# finding: none``), as bad_images/ names its error.
Every closure, reach and flow result asserted below was worked out by hand from the rules in
the module docstring (L4Re capabilities and mapping: https://l4re.org/doc/). A hypothesis test
compares the closure and the flows
with a naive oracle written independently here; the kernel-agreement tests drive the
in-memory kernel to check the rules the analysis assumes.
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from capabilities.analysis import ROM_NODE, Analysis, EdgeKind
from capabilities.image import (
    ALLOWED_RIGHTS,
    CapDecl,
    Image,
    ImageError,
    LogDecl,
    ObjectDecl,
    ObjectType,
    TaskDecl,
    parse_image,
)
from capabilities.kinds import BIND
from capabilities.lint import LintRule, Severity
from capabilities.rights import CapRights
from kernel_model.host.images import load_image, program_exists
from l4emu.check import check_image, explain

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
CORPUS = sorted((HERE / "analysis_images").glob("*.yaml"))
R, W, S, D, C = CapRights.R, CapRights.W, CapRights.S, CapRights.D, CapRights.SVR
SVR = CapRights.parse("svr")


def load(name: str) -> Image:
    return load_image(HERE / "analysis_images" / name).image


def expected_findings(path: Path) -> list[str]:
    lines = [ln.removeprefix("# finding:").strip() for ln in path.read_text().splitlines()
             if ln.startswith("# finding:")]
    assert lines, f"{path.name} has no '# finding:' header"
    return [] if lines == ["none"] else lines


def where(f) -> str:
    return f"tasks.{f.task}.caps.{f.cap}" if f.task else f"objects.{f.object}"


def texts(witnesses: dict) -> dict:
    return {(obj, rights): str(w) for (obj, rights), w in witnesses.items()}


def keys(edges) -> set:
    return {(e.kind.value, e.source, e.target, e.object) for e in edges}


# ------------------------------------------------------------------- lint corpus
@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_corpus_image_has_exactly_its_declared_findings(path):
    analysis = Analysis(load_image(path).image)
    got = [f"{f.severity.name.lower()} {f.rule.id} {where(f)}" for f in analysis.findings]
    assert sorted(got) == sorted(expected_findings(path))


def test_every_lint_rule_fires_in_the_corpus():
    declared = {line.split()[1] for path in CORPUS for line in expected_findings(path)}
    assert declared | {"rom-write"} == {rule.id for rule in LintRule}  # rom-write: see the test below


def test_rom_write_is_rejected_by_the_validator_and_flagged_on_an_image_built_in_code():
    text = "name: t\ntasks:\n  a:\n    program: testing.adversary\n    caps: {rom: 'rom:rw'}\n"
    with pytest.raises(ImageError):
        parse_image(text, "rom.yaml", program_exists)
    image = parse_image(text.replace("rom:rw", "rom:r"), "rom.yaml", program_exists)
    task = image.tasks[0]
    forged = dataclasses.replace(image, tasks=(dataclasses.replace(task, caps=(CapDecl("rom", "rom", R | W),)),))
    [finding] = Analysis(forged).findings
    assert (finding.rule, finding.severity, finding.task, finding.cap) == (LintRule.ROM_WRITE, Severity.ERROR, "a",
            "rom")


def test_findings_name_the_yaml_field_and_say_why():
    [finding] = Analysis(load("lint_gate_two_servers.yaml")).findings
    assert str(finding) == ("error[gate-two-servers] tasks.b.caps.g: b can bind gate 'g' as a can: "
                            "whoever binds last receives everything sent through it")
    [finding] = Analysis(load("lint_object_unheld.yaml")).findings
    assert str(finding) == "warning[object-unheld] objects.g: gate 'g' is declared but no task holds a cap to it"


# ------------------------------------------------------------------------- hello
def test_hello_has_no_error_findings_only_three_notes():
    analysis = Analysis(load_image(ROOT / "images" / "hello.yaml").image)
    assert [(f.severity, f.rule.id, where(f)) for f in analysis.findings] == [
        (Severity.INFO, "irq-write", "tasks.server.caps.kick"),
        (Severity.INFO, "irq-write", "tasks.client.caps.done"),
        (Severity.INFO, "ds-all-writers", "tasks.server.caps.shm"),
    ]


def test_hello_edges_declared_and_gained_through_the_closure():
    analysis = Analysis(load_image(ROOT / "images" / "hello.yaml").image)
    assert keys(analysis.edges) == {
        ("call", "client", "server", "ping"), ("memory", "server", "client", "shm"),
        ("memory", "client", "server", "shm"), ("irq", "client", "server", "kick"),
        ("irq", "server", "client", "done"), ("rom", ROM_NODE, "client", "rom")}
    # The client's ping cap has no S, so nothing it obtains through ping keeps S: it can never
    # bind ping or an IRQ (Fiasco's reply rule); only the rom namespace adds a reach.
    assert keys(analysis.derived_edges) == {("rom", ROM_NODE, "server", "rom")}
    call = next(e for e in analysis.edges if e.kind is EdgeKind.CALL)
    assert (str(call.source_cap), str(call.target_cap)) == ("ping=ping:rw", "ping=ping:svr")


def test_hello_closure_the_server_can_hand_the_client_its_own_gate_but_never_s():
    analysis = Analysis(load_image(ROOT / "images" / "hello.yaml").image)
    assert texts(analysis.obtainable("client")) == {
        ("ping", R | W | D | C): "client obtains ping:rwdc via: server --reply--> client (gate ping, now rwdc)",
        ("kick", R | W): "client obtains kick:rw via: server --reply--> client (gate ping, now rw)",
    }
    assert texts(analysis.obtainable("server")) == {
        ("rom", R): "server obtains rom:r via: client --call--> server (gate ping)",
        ("done", R | W): "server obtains done:rw via: client --call--> server (gate ping, now rw)",
    }
    assert analysis.can_obtain("client", "ping", SVR) is None
    assert str(analysis.flows(ROM_NODE, "server")) == (  # a path over declared caps is preferred
        "moe:rom can influence server via: moe:rom --rom--> client (namespace rom) --call--> server (gate ping)")


# --------------------------------------------------------------------------- V24
def test_v24_a_key_store_cap_leaks_to_gw_through_two_servers():
    analysis = Analysis(load("v24_chain.yaml"), reply_s_from_caller=False)
    assert texts(analysis.obtainable("gw")) == {
        ("gw_est", SVR): "gw obtains gw_est:svr via: est --reply--> gw (gate gw_est)",
        ("est_crypto", SVR): "gw obtains est_crypto:svr via: crypto --reply--> est (gate est_crypto) "
                             "--reply--> gw (gate gw_est)",
        ("crypto_keys", R | W): "gw obtains crypto_keys:rw via: crypto --reply--> est (gate est_crypto) "
                                "--reply--> gw (gate gw_est)",
    }
    assert texts(analysis.obtainable("est")) == {
        ("est_crypto", SVR): "est obtains est_crypto:svr via: crypto --reply--> est (gate est_crypto)",
        ("crypto_keys", R | W): "est obtains crypto_keys:rw via: crypto --reply--> est (gate est_crypto)",
    }
    assert texts(analysis.obtainable("crypto")) == {
        ("gw_est", SVR): "crypto obtains gw_est:svr via: est --reply--> crypto (gate gw_est)\n"
                         "  where crypto obtains gw_est:rwdc via: est --call--> crypto (gate est_crypto, now rwdc)",
    }


def test_v24_gw_never_reaches_crypto_directly_by_declaration_only_through_an_obtained_cap():
    analysis = Analysis(load("v24_chain.yaml"), reply_s_from_caller=False)
    assert ("call", "gw", "crypto", "est_crypto") not in keys(analysis.edges)
    # crypto can become a second server of gw's own gate (ties go to the gate declared first)
    assert str(analysis.can_reach("gw", "crypto")) == (
        "gw can reach crypto via: gw --call--> crypto (gate gw_est)\n"
        "  where crypto obtains gw_est:rwdc via: est --call--> crypto (gate est_crypto, now rwdc)\n"
        "  where crypto obtains gw_est:svr via: est --reply--> crypto (gate gw_est)")
    assert str(analysis.flows("crypto", "gw")) == (
        "crypto can influence gw via: crypto --reply--> est (gate est_crypto) --reply--> gw (gate gw_est)")


# ------------------------------------------------------------------------ S mask
def test_s_masking_stops_a_leak_under_fiascos_reply_rule():
    analysis = Analysis(load("s_mask.yaml"), reply_s_from_caller=True)
    assert texts(analysis.obtainable("b")) == {
        ("alarm", R): "b obtains alarm:r via: a --call--> b (gate svc, now r)",  # a's svc cap has no s
        ("bell", R | S): "b obtains bell:rs via: c --call--> b (gate svc)",  # c's has
    }
    assert analysis.can_obtain("b", "alarm", R | S) is None
    assert texts(analysis.obtainable("a")) == {
        ("svc", R | W | D | C): "a obtains svc:rwdc via: b --reply--> a (gate svc, now rwdc)"}
    assert texts(analysis.obtainable("c")) == {("svc", SVR): "c obtains svc:svr via: b --reply--> c (gate svc)"}
    assert analysis.can_reach("b", "a") is not None and ("irq", "b", "a", "alarm") in keys(analysis.derived_edges)
    assert ("irq", "a", "b", "alarm") not in keys(analysis.edges + analysis.derived_edges)


def test_s_masking_does_not_hold_under_the_looser_reply_rule():
    """If replies kept S (they do not, in Fiasco or the kernel model): b hands a its svr cap, and a's calls keep S."""
    analysis = Analysis(load("s_mask.yaml"), reply_s_from_caller=False)
    assert str(analysis.can_obtain("b", "alarm", R | S)) == (
        "b obtains alarm:rs via: a --call--> b (gate svc)\n"
        "  where a obtains svc:svr via: b --reply--> a (gate svc)")


# ------------------------------------------------------------ read-only dataspace
def test_a_read_only_dataspace_gives_no_write_flow():
    analysis = Analysis(load("ro_dataspace.yaml"))
    assert keys(analysis.edges) == {("memory", "producer", "consumer", "feed"),
                                    ("irq", "producer", "consumer", "ready")}
    assert analysis.derived_edges == ()
    assert str(analysis.flows("producer", "consumer")) == (
        "producer can influence consumer via: producer --memory--> consumer (dataspace feed)")
    assert analysis.flows("consumer", "producer") is None
    assert analysis.can_reach("consumer", "producer") is None
    assert analysis.obtainable("consumer") == {} and analysis.obtainable("producer") == {}
    assert analysis.can_obtain("consumer", "feed", R | W) is None
    assert str(analysis.can_obtain("consumer", "feed")) == "consumer holds feed:r: declared as cap 'feed' of consumer"


# ------------------------------------------------------------------- check, explain
def console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, color_system=None, highlight=False), out


def test_check_prints_reach_closure_flow_findings_and_exits_0_without_errors():
    con, out = console()
    assert check_image(ROOT / "images" / "hello.yaml", con) == 0
    text = out.getvalue()
    for part in ("hello (", "reachability", "ping=ping:rw -> ping=ping:svr", "authority closure",
                 "server --reply--> client (gate ping, now rwdc)", "information flow", "irq-write",
                 "tasks.server.caps.kick",
                 "0 errors, 0 warnings, 3 notes"):
        assert part in text, part
    # client -> server and server -> client are direct already; only the rom flow to the server is new
    assert "reach gained with obtainable caps (--why FROM TO shows how): moe:rom -> server\n" in text


def test_check_exits_1_on_an_error_finding_and_raises_on_an_invalid_image():
    con, out = console()
    assert check_image(HERE / "analysis_images" / "lint_gate_two_servers.yaml", con) == 1
    assert "gate-two-servers" in out.getvalue() and "1 errors, 0 warnings, 0 notes" in out.getvalue()
    with pytest.raises(ImageError):
        check_image(HERE / "bad_images" / "unknown_rights_letter.yaml", con)


def test_explain_prints_the_witness_or_no_path():
    con, out = console()
    assert explain(HERE / "analysis_images" / "v24_chain.yaml", "gw", "crypto_keys", con) == 0
    assert out.getvalue() == ("gw obtains crypto_keys:rw via: crypto --reply--> est (gate est_crypto) "
                              "--reply--> gw (gate gw_est)\n")
    con, out = console()
    assert explain(HERE / "analysis_images" / "ro_dataspace.yaml", "consumer", "producer", con) == 1
    assert out.getvalue().count("no path") == 2
    con, out = console()
    assert explain(HERE / "analysis_images" / "ro_dataspace.yaml", "nobody", "producer", con) == 2
    assert "no task 'nobody'" in out.getvalue()
    con, out = console()
    assert explain(ROOT / "images" / "hello.yaml", "rom", "server", con) == 0
    assert out.getvalue() == ("moe:rom can influence server via: moe:rom --rom--> client (namespace rom) "
                              "--call--> server (gate ping)\n")
    con, out = console()
    assert explain(ROOT / "images" / "hello.yaml", "rom", "shm", con) == 2 and "ask about a task" in out.getvalue()


# -------------------------------------------------- property: an independent oracle
def _below(rights: CapRights) -> set[CapRights]:
    extra = [b for b in (W, S, D, C) if b in rights]
    return {CapRights(R | sum(combo, CapRights.NONE)) for n in range(len(extra) + 1)
            for combo in itertools.combinations(extra, n)}


def oracle(image: Image, reply_s_from_caller: bool) -> dict[str, set[tuple[str, CapRights]]]:
    """Naive take-grant fixpoint over downward-closed sets of (object, rights)."""
    types = {o.name: o.type for o in image.objects}
    have = {t.name: {(c.object, r) for c in t.caps for r in _below(c.rights)} for t in image.tasks}
    changed = True
    while changed:
        changed = False
        for gate in (g for g, ty in types.items() if ty == ObjectType.GATE):
            servers = [t for t in have if any(o == gate and (r & BIND) == BIND for o, r in have[t])]
            for client in have:
                caps = [r for o, r in have[client] if o == gate]
                if not caps:
                    continue
                call_s = any(S in r for r in caps)
                for server in (s for s in servers if s != client):
                    for src, dst, keep in ((client, server, call_s),
                                           (server, client, call_s if reply_s_from_caller else True)):
                        for o, r in list(have[src]):
                            for x in _below(r if keep else CapRights(r & ~S)):
                                if (o, x) not in have[dst]:
                                    have[dst].add((o, x))
                                    changed = True
    return have


def oracle_flows(image: Image, have) -> dict[str, set[str]]:
    types = {o.name: o.type for o in image.objects} | {"rom": ObjectType.NAMESPACE}
    direct: set[tuple[str, str]] = set()
    for obj, ty in types.items():
        rights = {t: {r for o, r in held if o == obj} for t, held in have.items()}
        holders = [t for t in rights if rights[t]]
        for a, b in itertools.product(holders, holders):
            if a == b:
                continue
            if ty == ObjectType.GATE and any((r & BIND) == BIND for r in rights[b]):
                direct |= {(a, b), (b, a)}
            if ty == ObjectType.IRQ and any(S in r for r in rights[b]):
                direct.add((a, b))
            if ty == ObjectType.DATASPACE and any(W in r for r in rights[a]):
                direct.add((a, b))
        if ty == ObjectType.NAMESPACE:
            direct |= {(ROM_NODE, t) for t in holders}
    reach = {n: {b for a, b in direct if a == n} for n in list(have) + [ROM_NODE]}
    for _ in range(len(reach)):
        for n in reach:
            reach[n] = reach[n].union(*(reach.get(m, set()) for m in reach[n])) - {n}
    return reach


def maximal(rights: set[CapRights]) -> set[CapRights]:
    return {r for r in rights if not any(o != r and o.covers(r) for o in rights)}


@st.composite
def images(draw) -> Image:
    kinds = [ObjectType.GATE, ObjectType.GATE, ObjectType.IRQ, ObjectType.DATASPACE, ObjectType.FACTORY]
    objects = tuple(ObjectDecl(f"o{i}", draw(st.sampled_from(kinds)), 4096, 1) for i in range(draw(st.integers(1, 4))))
    tasks = []
    for i in range(draw(st.integers(2, 4))):
        caps = []
        for name, otype in [(o.name, o.type) for o in objects] + [("rom", ObjectType.NAMESPACE)]:
            if draw(st.booleans()):
                bits = [b for b in (W, S, D, C) if b in ALLOWED_RIGHTS[otype]]
                picked = draw(st.lists(st.sampled_from(bits), unique=True)) if bits else []
                caps.append(CapDecl(name, name, CapRights(R | sum(picked, CapRights.NONE))))
        tasks.append(TaskDecl(f"t{i}", "testing.adversary", (), LogDecl(f"t{i}", "w"), 1 << 20, "never", 3,
                              tuple(caps)))
    return Image("random", "<random>", "", 64 << 20, (), (), objects, tuple(tasks))


@settings(max_examples=150, deadline=None)
@given(images(), st.booleans())
def test_closure_and_flows_match_a_naive_oracle(image, fiasco):
    analysis = Analysis(image, reply_s_from_caller=fiasco)
    have = oracle(image, fiasco)
    for task in analysis.tasks:
        for obj in analysis.objects:
            mine = maximal({h.rights for h in analysis.holdings(task) if h.object == obj})
            assert mine == maximal({r for o, r in have[task] if o == obj}), (task, obj)
    flows = oracle_flows(image, have)
    for node in (ROM_NODE,) + analysis.tasks:
        assert set(analysis.influences(node)) == flows[node], node
        assert analysis.influence_set(node) == flows[node], node  # what `l4emu check` prints


@settings(max_examples=150, deadline=None)
@given(images())
def test_every_witness_replays_hop_by_hop(image):
    analysis = Analysis(image)
    declared = {t.name: {(c.object, c.rights) for c in t.caps} for t in image.tasks}

    def holds(task: str, obj: str, need: CapRights) -> bool:
        return any(h.object == obj and h.rights.covers(need) for h in analysis.holdings(task))

    for task in analysis.tasks:
        for (obj, rights), w in analysis.obtainable(task).items():
            assert (obj, w.origin_rights) in declared[w.origin]
            at, have = w.origin, w.origin_rights
            for step in w.steps:
                assert step.source == at and step.via_type == ObjectType.GATE
                assert have.covers(step.rights) and R in step.rights  # rights only shrink
                client, server = (step.source, step.target) if step.kind is EdgeKind.CALL else (step.target,
                                                                                               step.source)
                assert holds(client, step.via, R) and holds(server, step.via, BIND)
                if step.kind is EdgeKind.CALL and S in step.rights:
                    assert holds(step.source, step.via, R | S)
                for need in step.needs:
                    assert need.claim.split()[0] in (step.source, step.target) and f" {step.via}:" in need.claim
                at, have = step.target, step.rights
            assert (at, have) == (task, rights)


@settings(max_examples=50, deadline=None)
@given(images())
def test_analysis_is_deterministic(image):
    a, b = Analysis(image), Analysis(image)
    assert (a.edges, a.derived_edges, a.findings) == (b.edges, b.derived_edges, b.findings)
    assert [texts(a.obtainable(t)) for t in a.tasks] == [texts(b.obtainable(t)) for t in b.tasks]


# ----------------------------------------------------- agreement with the kernel model
from kernel_world import World  # noqa: E402  (the in-memory kernel, no processes)


def _words(*ws: int) -> bytes:
    return b"".join(w.to_bytes(8, "little") for w in ws)


def _bind(w: World, task, selector: int, proto: int):
    from kernel_model.abi import EnvSlot, GateOp, IpcFlags, IrqOp, MsgTag, Proto, sel
    from kernel_model.wire import Invocation
    op = GateOp.BIND_THREAD if proto == Proto.KOBJECT else IrqOp.BIND
    body = _words(op, 0x40, sel(EnvSlot.THREAD))
    w.do(task, Invocation(IpcFlags.CALL, selector, MsgTag(proto, 3), body))
    return w.results[task.name][-1]


def _transfer(client_gate_rights: CapRights, direction: str) -> CapRights:
    """Send an rws IRQ cap over a gate the client holds with ``client_gate_rights``; return what arrives."""
    from kernel_model.abi import INVALID_CAP, IpcFlags, MsgTag, Proto, sel
    from kernel_model.objects import IpcGate, Irq
    from kernel_model.wire import Invocation, Item
    w = World()
    server, client = w.task("server"), w.task("client")
    gate = IpcGate(name="svc")
    w.give(server, 16, gate, SVR)
    w.give(client, 16, gate, client_gate_rights)
    sender = client if direction == "call" else server
    w.give(sender, 17, Irq(name="q"), R | W | S)
    assert _bind(w, server, sel(16), Proto.KOBJECT).tag.label == 0
    w.do(server, Invocation(IpcFlags.WAIT, rcv_obj=sel(30)))
    items = (Item.obj(sel(17), int(R | W | S)),) if direction == "call" else ()
    w.do(client, Invocation(IpcFlags.CALL, sel(16), MsgTag(0x100, 0, len(items)), items=items, rcv_obj=sel(30)))
    if direction == "reply":
        w.do(server, Invocation(IpcFlags.REPLY | IpcFlags.SEND, INVALID_CAP, MsgTag(0, 0, 1),
                                items=(Item.obj(sel(17), int(R | W | S)),)))
    return w.rights(server if direction == "call" else client, sel(30))


def test_kernel_agrees_a_call_masks_s_when_the_client_cap_lacks_it():
    assert _transfer(R | W, "call") == R | W
    assert _transfer(R | W | S, "call") == R | W | S
    image = parse_image("name: t\nobjects: {svc: {type: gate}, q: {type: irq}}\ntasks:\n"
                        "  a: {program: testing.adversary, caps: {svc: 'svc:rw', q: 'q:rws'}}\n"
                        "  b: {program: testing.echo_server, caps: {svc: 'svc:svr'}}\n", "t.yaml", program_exists)
    assert set(Analysis(image, reply_s_from_caller=True).obtainable("b")) == {("q", R | W)}


def test_kernel_agrees_with_the_analysis_default_reply_rule():
    """Kernel._reply keeps S only if the caller's cap had S (Fiasco's Reply_cap::caller_rights).

    If the kernel model changes its reply rule, this fails: flip Analysis' ``reply_s_from_caller`` default.
    """
    kernel_keeps_s = S in _transfer(R | W, "reply")
    default = inspect.signature(Analysis).parameters["reply_s_from_caller"].default
    assert kernel_keeps_s == (not default)
    image = parse_image("name: t\nobjects: {svc: {type: gate}, q: {type: irq}}\ntasks:\n"
                        "  a: {program: testing.adversary, caps: {svc: 'svc:rw'}}\n"
                        "  b: {program: testing.echo_server, caps: {svc: 'svc:svr', q: 'q:rws'}}\n", "t.yaml",
                        program_exists)
    assert (Analysis(image).can_obtain("a", "q", R | W | S) is not None) == kernel_keeps_s


def test_kernel_agrees_binding_a_gate_needs_c_and_s_and_an_irq_needs_s():
    from kernel_model.abi import Err, Proto, sel
    from kernel_model.objects import IpcGate, Irq
    w = World()
    t = w.task("t")
    w.give(t, 16, IpcGate(name="g"), R | W | C)
    w.give(t, 17, Irq(name="q"), R | W)
    assert _bind(w, t, sel(16), Proto.KOBJECT).tag.label == -Err.EPERM
    assert _bind(w, t, sel(17), Proto.IRQ_SENDER).tag.label == -Err.EPERM
    [finding] = Analysis(load("lint_svr_cannot_bind.yaml")).findings
    assert finding.rule is LintRule.SVR_CANNOT_BIND
    assert not [e for e in Analysis(load("lint_svr_cannot_bind.yaml")).edges if e.target == "b"]


def test_kernel_agrees_any_irq_holder_triggers():
    from kernel_model.abi import IpcFlags, IrqOp, MsgTag, Proto, sel
    from kernel_model.objects import Irq
    from kernel_model.wire import Invocation
    w = World()
    binder, trigger = w.task("binder"), w.task("trigger")
    irq = Irq(name="q")
    w.give(binder, 16, irq, R | S)
    w.give(trigger, 16, irq, R)
    assert _bind(w, binder, sel(16), Proto.IRQ_SENDER).tag.label == 0
    w.do(trigger, Invocation(IpcFlags.SEND, sel(16), MsgTag(Proto.IRQ, 1), _words(IrqOp.TRIGGER)))
    w.do(binder, Invocation(IpcFlags.WAIT))
    assert w.results["binder"][-1].label == 0x40 and irq.triggers == 1
    image = parse_image("name: t\nobjects: {q: {type: irq}}\ntasks:\n"
                        "  binder: {program: testing.adversary, caps: {q: 'q:rs'}}\n"
                        "  trigger: {program: testing.adversary, caps: {q: 'q:r'}}\n", "t.yaml", program_exists)
    assert keys(Analysis(image).edges) == {("irq", "trigger", "binder", "q")}


def _pairs(n: int):
    import importlib.util
    spec = importlib.util.spec_from_file_location("check_scale", Path(__file__).parents[1] / "bench" / "check_scale.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from capabilities.image import parse_image
    return parse_image(mod.pairs_image(n), "pairs.yaml")


def test_analysis_work_grows_linearly_with_the_image():
    """Counted inner-loop steps, not time: doubling the tasks (independent pairs + one shared IRQ) at most
    doubles the work (plus a little); the old per-object scans made it grow with the square."""
    small, big = Analysis(_pairs(201)), Analysis(_pairs(401))
    for a in (small, big):
        for t in a.tasks:
            a.influences(t)
    assert big.work <= 2.2 * small.work, (small.work, big.work)


@pytest.mark.parametrize("n", [7, 41])
def test_influence_set_equals_the_witness_search(n):
    """The report's fast reachability (components + bit sets) and the BFS with witnesses agree."""
    a = Analysis(_pairs(n))
    for src in (ROM_NODE,) + a.tasks:
        assert a.influence_set(src) == frozenset(a.influences(src)), src
