"""The one server loop: receive, dispatch to ``handle``, reply and wait for the next message.

A service is ``handle(msg) -> Reply | None``: the reply to the message (its status is the
service's answer: ``>= 0`` success, ``-L4_E*`` an error, as in L4Re), or None when the message
gets no reply (an IRQ, a notice). ``serve(env, handle)`` runs it for ever::

    def handle(msg: Msg) -> Reply | None:
        if msg.proto != MY_PROTO:
            return Reply(-Err.EBADPROTO)
        return Reply(0, (answer,))

    serve(env, handle)

Each reply goes out with the receive of the next message (one ``REPLY_AND_WAIT``, as L4
servers do). Errors are values: a receive that fails (the caller went away, a timeout) is
dropped and the loop waits again; an exception escaping ``handle`` is a bug in the service,
logged and answered with ``-L4_EIO`` so the client gets a status instead of a hang, and the
service carries on (a message that expects no reply, e.g. an IRQ, should not raise: the
kernel records a reply without a caller). Only ``ChannelClosed`` (the kernel is gone) ends
the loop.

A service with its own timed work passes ``due_in`` (µs until that work is due; None = no
timer) and ``work`` (do it): the loop then waits at most that long, and when the work is due
it first sends the reply it owes, then calls ``work``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from kernel_model.abi import Err
from kernel_model.wire import Item
from tasks.runtime.channel import ChannelClosed


@dataclasses.dataclass(frozen=True)
class Reply:
    """What a server answers: the reply tag label (status), message words, a byte blob, typed items."""

    status: int = 0
    words: tuple[int, ...] = ()
    blob: bytes = b""
    items: tuple[Item, ...] = ()


Handler = Callable[[Any], "Reply | None"]


def dispatch(env: Any, handle: Handler, msg: Any) -> Reply | None:
    """``handle(msg)``, with an escaping exception turned into a logged ``-L4_EIO`` reply."""
    try:
        return handle(msg)
    except ChannelClosed:
        raise
    except Exception as exc:
        env.log(f"request failed: {type(exc).__name__}: {exc}")
        return Reply(-int(Err.EIO))


def serve(env: Any, handle: Handler, *, due_in: Callable[[], int | None] | None = None,
          work: Callable[[], None] | None = None) -> None:
    """Serve for ever (see the module docstring). Returns only by ``ChannelClosed``."""
    pending: Reply | None = None
    while True:
        timeout_us = None
        if due_in is not None:
            timeout_us = due_in()
            if timeout_us is not None and timeout_us <= 0:
                if pending is not None:
                    _send(env.reply, pending)
                    pending = None
                if work is not None:
                    work()
                continue
        if pending is None:
            msg = env.wait(timeout_us=timeout_us)
        else:
            msg = _send(env.reply_and_wait, pending, timeout_us=timeout_us)
        pending = dispatch(env, handle, msg) if msg.ok else None


def _send(ipc: Callable[..., Any], reply: Reply, **kwargs: Any) -> Any:
    return ipc(reply.status, *reply.words, blob=reply.blob, items=reply.items, **kwargs)
