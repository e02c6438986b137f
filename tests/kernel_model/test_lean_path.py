"""The lean kernel path: the per-message values, the tag cache, no aliasing of a reused frame buffer,
IPC counts per task (named lazily) and the set of timed threads ``expire`` looks at."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from capabilities.rights import CapRights
from kernel_model import abi
from kernel_model.abi import INVALID_CAP, IpcError, IpcFlags, MsgTag, timeouts
from kernel_model.objects import IpcGate
from kernel_model.wire import Invocation, Item, ItemKind, RecvItem, Result, WireError, decode_invocation
from kernel_world import World, call, frame, words

_TAGS = st.builds(MsgTag, st.integers(-(1 << 47), (1 << 47) - 1), st.integers(0, 63), st.integers(0, 31),
                  st.sampled_from([0, 0x1000, 0x3000, 0xF000]))


@given(_TAGS, _TAGS)
def test_msgtags_are_values_equal_and_hashed_by_their_fields(a, b):
    same = MsgTag(a.label, a.words, a.items, a.flags)
    assert a == same and hash(a) == hash(same) and repr(a) == repr(same)
    assert (a == b) == ((a.label, a.words, a.items, a.flags) == (b.label, b.words, b.items, b.flags))
    assert a != (a.label, a.words, a.items, a.flags)  # not a tuple
    assert eval(repr(a)) == a  # the repr names the fields


def test_frame_values_compare_by_fields_and_type():
    item, to = (Item.obj(0x2000, 7),), timeouts(0, None)
    inv = Invocation(IpcFlags.CALL, 0x1000, MsgTag(1, 1, 1), b"x" * 8, item, to)
    assert inv == Invocation(IpcFlags.CALL, 0x1000, MsgTag(1, 1, 1), b"x" * 8, (Item.obj(0x2000, 7),), to)
    assert inv != Invocation(IpcFlags.CALL, 0x1000, MsgTag(1, 1, 1), b"y" * 8, item, to)
    assert len({inv, decode_invocation(inv.encode())}) == 1
    rec = RecvItem(ItemKind.MEMORY, 0x1000, 6, 4096, 0)
    assert Result(IpcError.OK, MsgTag(), 0, b"", (rec,)) == Result(items=(RecvItem(ItemKind.MEMORY, 0x1000, 6, 4096),))
    assert Result() != Result(error=IpcError.SEABORTED)
    assert Item(ItemKind.OBJECT, 1, 2) != RecvItem(ItemKind.OBJECT, 1, 2)  # same fields, other type
    assert "Invocation(flags=" in repr(inv) and "dest=4096" in repr(inv)


@given(st.integers(1, 8).flatmap(lambda n: st.binary(min_size=8 * n, max_size=8 * n)))
def test_decoded_data_is_a_copy_never_a_view_of_the_callers_buffer(data):
    raw = Invocation(IpcFlags.CALL, 0x1000, MsgTag(0x100, len(data) // 8), data).encode()
    buffer = bytearray(raw)
    for view in (buffer, memoryview(buffer)):
        inv = decode_invocation(view)
        assert type(inv.data) is bytes and inv.data == data
        buffer[len(buffer) - len(data):] = bytes(len(data))  # the buffer is reused for the next frame
        buffer[0] = 0xFF
        assert inv.data == data
        buffer[:] = raw


def test_the_tag_cache_is_bounded_whatever_tags_a_task_sends():
    for raw in range(3 * abi._TAG_CACHE):
        tag = raw << 16  # a distinct label each time: the tags a hostile task chooses
        inv = decode_invocation(frame(tag=tag))
        assert inv.tag == MsgTag(raw, 0, 0, 0)
    assert len(abi._TAGS) <= abi._TAG_CACHE
    with_flags = MsgTag.from_raw(0x100 << 16 | 0x1000 | 1 << 6 | 2)
    assert MsgTag.from_raw(with_flags.raw()) is with_flags  # cached again after the flood
    assert with_flags == MsgTag(0x100, 2, 1, 0x1000)


def test_a_hostile_tag_is_still_refused_by_the_decoder_however_it_is_cached():
    bad = 63 | 10 << 6  # 63 words + 2 x 10 items: more than 63 registers
    MsgTag.from_raw(bad)  # cached (maybe) by someone else first
    try:
        decode_invocation(frame(tag=bad))
    except WireError as exc:
        assert "more than 63 registers" in str(exc)
    else:
        raise AssertionError("the decoder accepted a tag over 63 registers")


def _echo_world() -> tuple[World, object, object]:
    w = World()
    server, client = w.task("server"), w.task("client")
    gate = IpcGate(name="svc", label=0x10, thread=server.threads[0])
    w.give(server, 16, gate, CapRights.parse("svr"))
    w.give(client, 16, gate, CapRights.R | CapRights.W)
    w.do(server, Invocation(IpcFlags.WAIT))
    return w, server, client


def test_ipc_counts_are_per_task_name_summed_over_incarnations():
    w, server, client = _echo_world()
    for n in range(3):
        w.do(client, call(16 << 12, data=words(n)))
        assert w.last("server").data == words(n)
        w.do(server, Invocation(IpcFlags.REPLY_AND_WAIT, INVALID_CAP, MsgTag(0, 1), words(n),
                                timeout=timeouts(0, None)))
        assert w.last("client").data == words(n) and w.last("client").error is IpcError.OK
    again = w.task("client")  # a second incarnation of the same name
    w.do(again, call(16 << 12))  # an empty selector in the new one: still an IPC it made
    w.raw(again, b"not a frame")  # a frame that does not decode is not counted
    assert w.k.ipc_by_task == {"server": 4, "client": 4}
    assert w.k.ipc_count == 8


def test_only_blocked_threads_with_a_deadline_are_timed_and_none_is_left_behind():
    w, server, client = _echo_world()
    k = w.k

    def consistent():
        assert k._timed <= k._blocked
        assert {t for t in k._blocked if t.deadline is not None} == k._timed

    w.do(client, call(16 << 12, data=words(1), timeout=timeouts(0, 1000)))  # waits for the reply, 1 ms
    consistent()
    assert client.threads[0] in k._timed and server.threads[0] not in k._timed
    w.tick(2000)
    assert w.last("client").error is IpcError.RETIMEOUT
    consistent()
    assert not k._timed
    w.do(server, Invocation(IpcFlags.REPLY_AND_WAIT, INVALID_CAP, MsgTag(0, 1), words(1), timeout=timeouts(0, 500)))
    assert w.last("server").error is IpcError.ENOT_EXISTENT  # the caller timed out: the reply finds nobody
    consistent()
    w.do(server, Invocation(IpcFlags.WAIT, timeout=timeouts(0, 500)))  # waits again, now with a deadline
    consistent()
    assert server.threads[0] in k._timed
    w.do(client, call(16 << 12, data=words(2)))  # no timeout: the client waits for ever
    consistent()
    assert client.threads[0] not in k._timed and server.threads[0] not in k._timed
    assert k.next_deadline() is None
