"""Moe applies each task's restart policy (``supervision``) and closes the gates of servers gone for good.

``exited`` is called for every real exit of a task's incarnation. A restart is never made from
inside the exit notice's handling: it is scheduled, and Moe's server loop waits for the next
message *or* the earliest due restart (its IPC receive timeout, ``wait_timeout_us``) and then
makes the restarts that are due (``restart_due``). No sleeps: a message that arrives meanwhile is
served at once.

When a task is finished for good (the policy does not restart after that status, or Moe gave
up), every gate the image lets it serve (a cap with ``S`` on a gate: the right to bind it) is
declared gone (``GateOp.SERVER_GONE``) unless another task that serves it is still alive or due
to restart: callers waiting for a binding that will never come, and every later caller, get
``L4_IPC_ENOT_EXISTENT`` at once instead of waiting for their own timeout or forever.

Moe reports each change as ``METRIC {"supervision": {...}}`` on its console: the boot view
shows it in the task table (restarts, generation, next attempt) and with ``--trace``.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable

from capabilities.image import ObjectType
from capabilities.rights import CapRights
from kernel_model.abi import GateOp, Proto
from roottasks.moe import loader
from roottasks.moe import supervision as sv
from roottasks.moe.loader import LoaderServices, TaskRecord

CLOCK: Callable[[], float] = time.monotonic  #: Moe's clock (seconds); the policy itself never reads one


def exited(moe: LoaderServices, rec: TaskRecord, code: int) -> None:
    policy = rec.decl.restart_policy
    how = "exited" if code < 128 else f"was killed by signal {code - 128}"
    now = CLOCK()
    decision = sv.after_exit(policy, rec.supervision, code, now)
    sv.apply(rec.supervision, decision)
    moe.say(sv.message(rec.name, how, code, policy, decision))
    if isinstance(decision, sv.Restart) and decision.delay <= 0:
        restart(moe, rec, now)
    elif not isinstance(decision, sv.Restart):
        rec.finished = True
        close_served_gates(moe, rec)
    report(moe)


def restart(moe: LoaderServices, rec: TaskRecord, now: float) -> None:
    sv.started(rec.supervision, now, rec.decl.restart_policy)
    rec.restarts = rec.supervision.restarts
    loader.start(moe, rec)


def restart_due(moe: LoaderServices) -> None:
    """Make every restart whose time has come."""
    now = CLOCK()
    made = False
    for rec in moe.tasks.values():
        if not rec.running and not rec.finished and sv.due(rec.supervision, now):
            restart(moe, rec, now)
            made = True
    if made:
        report(moe)


def wait_timeout_us(moe: LoaderServices) -> int | None:
    """How long Moe's open wait may last: until the earliest pending restart (None: no restart pending)."""
    pending = [r.supervision.next_attempt for r in moe.tasks.values()
               if r.supervision.next_attempt is not None and not r.running and not r.finished]
    if not pending:
        return None
    return max(0, int((min(pending) - CLOCK()) * 1e6) + 1)


def served_gates(decl) -> list[str]:
    """The gate objects a task may bind (its caps with S on a gate)."""
    return [c.object for c in decl.caps if CapRights.S in c.rights]  # Moe checks the type (close_served_gates)


def close_served_gates(moe: LoaderServices, rec: TaskRecord) -> None:
    for name in served_gates(rec.decl):
        selector, otype = moe.named.get(name, (0, ""))
        if otype != ObjectType.GATE or not selector:
            continue
        others = [r for r in moe.tasks.values() if r is not rec and not r.finished and name in served_gates(r.decl)]
        if others:
            continue  # another server of this gate is alive or due to restart
        status = moe.env.call(selector, Proto.KOBJECT, GateOp.SERVER_GONE).status
        moe.say(f"{rec.name} is gone for good: callers of {name} get L4_IPC_ENOT_EXISTENT"
                + (f" (the kernel refused: {status})" if status < 0 else ""))


def state(moe: LoaderServices) -> dict:
    now = CLOCK()
    out = {}
    for rec in moe.tasks.values():
        st = rec.supervision
        if rec.running:
            what = "running"
        elif st.next_attempt is not None and not rec.finished:
            what = "restarting"
        elif st.gave_up:
            what = "gave up"
        else:
            what = "finished"
        out[rec.name] = {
            "state": what, "policy": rec.decl.restart_policy.describe(), "generation": st.generation,
            "restarts": st.restarts,
            "next_attempt_s": round(max(0.0, st.next_attempt - now), 3) if st.next_attempt is not None else None,
            "gave_up": st.gave_up or None,
        }
    return out


def report(moe: LoaderServices) -> None:
    moe.say("METRIC " + json.dumps({"supervision": state(moe)}, separators=(",", ":")))
