"""The one server loop, against a scripted env: reply-and-wait, errors as status values, timed work."""
from __future__ import annotations

import pytest

from kernel_model.abi import Err, IpcError, MsgTag
from tasks.runtime.channel import ChannelClosed
from tasks.runtime.env import Msg, pack
from tasks.runtime.serve import Reply, serve
from tasks.runtime.shm import SHM_PROTO, shm_calls


def msg(proto=0x100, *words, label=0x10, error=IpcError.OK):
    return Msg(error, MsgTag(proto, len(words)), label, pack(*words))


class ScriptedEnv:
    """Hands out the scripted messages, records every IPC; the kernel 'goes away' at the end."""

    def __init__(self, *script):
        self.script, self.calls, self.lines = list(script), [], []

    def _next(self):
        if not self.script:
            raise ChannelClosed("end of script")
        return self.script.pop(0)

    def wait(self, timeout_us=None):
        self.calls.append(("wait", timeout_us))
        return self._next()

    def reply_and_wait(self, status, *words, blob=b"", items=(), timeout_us=None):
        self.calls.append(("reply_and_wait", status, words, blob, timeout_us))
        return self._next()

    def reply(self, status, *words, blob=b"", items=()):
        self.calls.append(("reply", status, words, blob))

    def log(self, text):
        self.lines.append(text)


def test_each_reply_goes_out_with_the_next_wait():
    env = ScriptedEnv(msg(0x100, 1), msg(0x100, 2))
    with pytest.raises(ChannelClosed):
        serve(env, lambda m: Reply(0, (m.word(0) + 1,), b"ok"))
    assert env.calls == [("wait", None), ("reply_and_wait", 0, (2,), b"ok", None),
                         ("reply_and_wait", 0, (3,), b"ok", None)]


def test_failed_receives_and_no_reply_messages_just_wait_again():
    env = ScriptedEnv(msg(error=IpcError.RECANCELED), msg(0x200), msg(0x100, 5))
    seen = []

    def handle(m):
        seen.append(m.proto)
        return None if m.proto == 0x200 else Reply(-int(Err.EINVAL))

    with pytest.raises(ChannelClosed):
        serve(env, handle)
    assert seen == [0x200, 0x100]  # the failed receive never reached the handler
    assert env.calls == [("wait", None), ("wait", None), ("wait", None), ("reply_and_wait", -22, (), b"", None)]


def test_a_handler_bug_is_a_status_to_its_client_and_the_service_carries_on():
    env = ScriptedEnv(msg(0x100, 0), msg(0x100, 1))
    with pytest.raises(ChannelClosed):
        serve(env, lambda m: Reply(0, (10 // m.word(0),)))
    assert env.calls[1] == ("reply_and_wait", -int(Err.EIO), (), b"", None)
    assert env.calls[2] == ("reply_and_wait", 0, (10,), b"", None)
    assert env.lines == ["request failed: ZeroDivisionError: integer division or modulo by zero"]


def test_timed_work_runs_after_the_owed_reply_and_bounds_the_wait():
    env = ScriptedEnv(msg(0x100, 1), msg(error=IpcError.RETIMEOUT))
    timers, done = [500, 0, 700, 700], []

    def work():
        done.append(len(env.calls))

    with pytest.raises(ChannelClosed):
        serve(env, lambda m: Reply(7), due_in=lambda: timers.pop(0) if timers else None, work=work)
    assert env.calls[:3] == [("wait", 500), ("reply", 7, (), b""), ("wait", 700)]
    assert done == [2]  # after the reply, before the next wait


def test_shm_calls_answer_other_protocols_with_ebadproto_or_pass_them_on():
    handler = shm_calls({}, lambda peer, request: b"")
    assert handler(msg(0x100)) == Reply(-int(Err.EBADPROTO))
    assert handler(msg(SHM_PROTO, 0, label=0x30)) == Reply(-int(Err.EPERM))  # no peer with that label
    assert shm_calls({}, lambda peer, request: b"", other=lambda m: None)(msg(0x100)) is None
