"""Moe's state and its server loop."""
from __future__ import annotations

from typing import Any

from capabilities.image import Image, ObjectType, parse_image
from capabilities.rights import CapRights, MemRights
from kernel_model.abi import (
    KERNEL_LABEL,
    DebuggerOp,
    EnvSlot,
    Err,
    FactoryOp,
    LogOp,
    Proto,
    Sigma0Op,
    TaskOp,
    UnmapMask,
    sel,
)
from kernel_model.wire import ItemKind, log_chunks
from roottasks.moe import loader, restarts
from roottasks.moe.objects import Backing, DataspaceObject, NamespaceObject, ParentObject, Response, Served

FACTORY = sel(EnvSlot.FACTORY)
PAGER = sel(EnvSlot.PAGER)
KERNEL_LOG = sel(EnvSlot.LOG)
DEBUGGER = sel(EnvSlot.DEBUGGER)
TASK = sel(EnvSlot.TASK)


class Moe:
    def __init__(self, env: Any) -> None:  # the task runtime's Env
        self.env = env
        self.objects: dict[int, Served] = {}
        self._next_label = 1
        self.pool: dict[int, list[Backing]] = {}  # freed RAM by size, reused zeroed
        self.done_code: int | None = None
        self.image: Image | None = None
        self.tasks: dict[str, loader.TaskRecord] = {}
        self.named: dict[str, tuple[int, str]] = {}  # image object name -> (Moe's selector, type)

    # -- output ----------------------------------------------------------------
    def console(self, line: str) -> None:
        for chunk in log_chunks(line):  # the kernel's log write limit, defined once (wire.LOG_WRITE_MAX)
            self.env.send(KERNEL_LOG, Proto.LOG, LogOp.WRITE, len(chunk), blob=chunk)

    def say(self, text: str) -> None:
        self.console(text)  # the kernel tags the lines of its console with the writer's name

    def set_name(self, selector: int, name: str) -> None:
        self.env.call(DEBUGGER, Proto.DEBUGGER, DebuggerOp.SET_OBJECT_NAME, selector, blob=name.encode())

    # -- kernel objects ----------------------------------------------------------
    def create(self, what: FactoryOp, *args: int, blob: bytes = b"", name: str = "") -> int:
        slot = self.env.alloc_slot()
        msg = self.env.call(FACTORY, Proto.FACTORY, int(what), *args, blob=blob, rcv_cap=slot)
        msg.check(f"create {what.name.lower()} {name}")
        if name:
            self.set_name(slot, name)
        return slot

    def serve(self, obj: Served, name: str) -> int:
        """Create a gate for ``obj``, bound to Moe's thread with a fresh label."""
        label = self._next_label << 2
        self._next_label += 1
        gate = self.create(FactoryOp.GATE, name=name)
        if self.env.bind_gate(gate, label) < 0:
            raise RuntimeError(f"cannot bind gate {name}")
        obj.label, obj.gate = label, gate
        self.objects[label] = obj
        return gate

    def release(self, selector: int) -> None:
        self.env.call(TASK, Proto.TASK, TaskOp.RELEASE_CAP, selector)

    def delete(self, selector: int) -> None:
        self.env.call(TASK, Proto.TASK, TaskOp.UNMAP, UnmapMask.DELETE_OBJ, ItemKind.OBJECT, selector, 1,
                      int(CapRights.R | CapRights.W | CapRights.S | CapRights.D))

    # -- memory ------------------------------------------------------------------
    def ram(self, size: int) -> Backing | None:
        reuse = self.pool.get(size)
        if reuse:
            backing = reuse.pop()
            assert backing.region is not None  # pooled backings were made by ram() below, mapped
            backing.region.write(0, bytes(size))
            return backing
        msg = self.env.call(PAGER, Proto.SIGMA0, Sigma0Op.RAM, size, rcv_mem=size)
        if not msg.ok or msg.status < 0 or not msg.regions:
            return None
        region = msg.regions[0]
        return Backing(region.address, size, MemRights.R | MemRights.W, region)

    def new_dataspace(self, size: int, *, name: str, owner=None) -> DataspaceObject | None:
        backing = self.ram(size)
        if backing is None:
            return None
        ds = DataspaceObject(self, backing, size, owner=owner)
        self.serve(ds, name)
        return ds

    def free_dataspace(self, ds: DataspaceObject) -> None:
        """Delete the dataspace: its gate dies and every mapping of its memory is revoked."""
        self.delete(ds.gate)
        self.objects.pop(ds.label, None)
        self.env.call(TASK, Proto.TASK, TaskOp.UNMAP, UnmapMask.OTHER_SPACES, ItemKind.MEMORY,
                      ds.backing.address, ds.backing.size, int(MemRights.R | MemRights.W | MemRights.X))
        self.pool.setdefault(ds.backing.size, []).append(ds.backing)

    # -- children ----------------------------------------------------------------
    def child_exited(self, record: loader.TaskRecord, code: int, notice_from: ParentObject) -> None:
        loader.child_exited(self, record, code, notice_from)
        restarts.exited(self, record, code)  # restart now, later (backoff), or never (its gates are then closed)

    def delete_served(self, gate: int) -> None:
        """Delete one of Moe's gates (every cap to it empties) and forget the object behind it."""
        label = next((lbl for lbl, obj in self.objects.items() if obj.gate == gate), None)
        self.delete(gate)
        if label is not None:
            del self.objects[label]

    # -- boot and serve -----------------------------------------------------------
    def boot(self) -> None:
        text = self.env.modules["image"].read(0, self._module_size("image")).decode()
        self.image = parse_image(text, "rom/image")
        self.say(f"image {self.image.name!r}: starting {len(self.image.tasks)} task(s)")
        entries = {}
        for mod in self.env.record.modules:
            backing = Backing(mod.address, mod.mapped, MemRights.R | MemRights.X)
            ds = DataspaceObject(self, backing, mod.size)
            entries[mod.name] = self.serve(ds, f"rom/{mod.name}")
        rom = NamespaceObject(self, entries)
        self.named["rom"] = (self.serve(rom, "rom"), ObjectType.NAMESPACE)
        for obj in self.image.objects:
            self.named[obj.name] = (loader.create_object(self, obj), obj.type)
        for decl in self.image.tasks:
            record = loader.TaskRecord(decl)
            self.tasks[decl.name] = record
            loader.start(self, record)
        self._check_done()

    def _module_size(self, name: str) -> int:
        return next(m.size for m in self.env.record.modules if m.name == name)

    def _check_done(self) -> None:
        assert self.image is not None
        until = self.image.run_until
        if not until:
            return
        records = [self.tasks[name] for name in until]
        if all(r.finished for r in records):
            self.done_code = 0 if all(r.exit_code == 0 for r in records) else 1
            self.say(f"all of {', '.join(until)} finished; system exit status {self.done_code}")

    def _wait(self):
        return self.env.wait(restarts.wait_timeout_us(self))

    def run(self) -> int:
        self.boot()
        msg = None
        while self.done_code is None:
            restarts.restart_due(self)  # backoff timers: the wait below ends when the next one is due
            if msg is None or not msg.ok:
                msg = self._wait()
                continue
            if msg.label & KERNEL_LABEL:  # a kernel notice: no task can send one
                obj = self.objects.get(msg.label & ~KERNEL_LABEL & ~3)
                if isinstance(obj, ParentObject):
                    obj.kernel_notice(msg)
                self._check_done()
                msg = self._wait() if self.done_code is None else None
                continue
            obj = self.objects.get(msg.label & ~3)
            if obj is None:
                resp: Response | None = Response(-int(Err.ENOENT)) if msg.proto != Proto.PARENT else None
            else:
                resp = obj.handle(msg)
            self._check_done()
            if self.done_code is not None:
                if resp is not None:
                    self.env.reply(resp.status, *resp.words, blob=resp.blob, items=resp.items)
                break
            if resp is None:
                msg = self._wait()
            else:
                msg = self.env.reply_and_wait(resp.status, *resp.words, blob=resp.blob, items=resp.items,
                                              timeout_us=restarts.wait_timeout_us(self))
        return self.done_code


def main(env) -> int:
    return Moe(env).run()
