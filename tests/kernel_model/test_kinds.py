"""One registry entry per kernel object kind (invoke.KERNEL_KINDS) and per image object kind (capabilities.kinds)."""
from __future__ import annotations

import dataclasses

from capabilities import image
from capabilities.kinds import DECLARABLE, IMAGE_KINDS
from kernel_model import invoke
from kernel_model.abi import Err, FactoryOp, Proto, sel
from kernel_model.events import Rule
from kernel_model.objects import Factory, KObject, Memory, ObjType
from kernel_world import RWS, World, call, words


def test_every_kernel_object_class_has_one_entry_and_every_factory_op_a_creator():
    classes = {cls for cls in _subclasses(KObject) if cls.__module__ == "kernel_model.objects"}
    assert set(invoke.KERNEL_KINDS) == classes - {Memory}  # memory is mapped, never invoked
    assert {kind.factory_op for kind in invoke.KERNEL_KINDS.values() if kind.create} == set(FactoryOp)


def test_every_image_kind_drives_the_schema_and_moe_can_make_the_kernel_ones():
    assert set(image.OBJECT_KEYS) == set(DECLARABLE)
    assert set(image.ALLOWED_RIGHTS) == set(IMAGE_KINDS)
    for kind in IMAGE_KINDS.values():
        if kind.factory_args is not None:  # Moe asks the kernel factory: FactoryOp has the same name
            assert invoke.BY_FACTORY_OP[int(FactoryOp[kind.name.upper()])].factory_op is FactoryOp[kind.name.upper()]


@dataclasses.dataclass(eq=False)
class Counter(KObject):
    """A hypothetical new kernel object: adding it is one class and one registry entry."""

    count: int = 0

    def __post_init__(self) -> None:
        self.type = ObjType.DEBUGGER  # an existing type name for the dump; a real kind adds its own


def _count(k, thread, cap, inv):
    cap.obj.count += 1
    return invoke.Reply(cap.obj.count)


def test_a_new_kind_needs_nothing_but_its_entry(monkeypatch):
    op = 0x7F  # a factory op no kind uses
    kind = invoke.KernelKind(Counter, (Proto.SEMAPHORE,), _count, None, lambda *_: Counter(name="c"))
    monkeypatch.setitem(invoke.KERNEL_KINDS, Counter, kind)
    monkeypatch.setitem(invoke.BY_FACTORY_OP, op, kind)
    w = World()
    t = w.task("t")
    w.give(t, 16, Factory(name="fab", quota=5), RWS)
    assert w.do(t, call(sel(16), Proto.FACTORY, words(op), rcv_obj=sel(20))).tag.label == 0
    assert [w.do(t, call(sel(20), Proto.SEMAPHORE, words(0))).tag.label for _ in range(2)] == [1, 2]
    assert w.do(t, call(sel(20), Proto.TASK, words(0))).tag.label == -Err.EBADPROTO
    assert w.k.violations[-1].rule is Rule.WRONG_OBJECT_TYPE


def _subclasses(cls: type) -> set[type]:
    out: set[type] = set()
    subs: list[type] = cls.__subclasses__()
    for sub in subs:
        out |= {sub} | _subclasses(sub)
    return out
