"""The byte-layout toolkit: a message declares its fields once; encode, decode and checks follow.

A *layout* is a table of ``Field``s, in wire order (all integers little-endian)::

    u8 u16 u32 u64 i8 i16 i32 i64   an integer (``conv`` turns the raw value into an enum/flag;
                                    ``raw`` turns the attribute back when ``int()`` will not do)
    var8 var16 var32                bytes with a u8/u16/u32 length prefix
    fixed(n)                        exactly n bytes
    rest                            everything up to the fixed-size fields that follow it (at
                                    most one ``rest``; only fixed-size fields may follow it)
    pad(n)                          n bytes that must be zero (no attribute)
    const(kind, v)                  an integer that must be v (no attribute), e.g. a frame kind

Byte fields with ``text="strict"`` (or ``"replace"``) hold UTF-8 text: the attribute is a
``str``. A ``Layout`` is compiled once: consecutive fixed-size fields become one precomputed
``struct.Struct``, so decoding a fixed-size record is one ``unpack_from`` plus the checks.

``message(*fields)`` makes a frozen, slotted dataclass whose attributes are the layout's
visible fields, in order, with ``to_payload()``, ``from_payload()`` and construction-time
checks derived from the one table, so a layout cannot be encoded one way and decoded another
(the idol-file idea of Hubris). ``Tagged`` is ``u8 tag | payload`` with one layout per tag.
Decoders are total: any bytes give a value or a
``DecodeError`` (a ``ValueError``), never another exception.

Compiled once per layout: besides the fixed-record fast path, every layout gets
generated straight-line Python for ``encode_parts`` (the wire bytes as a few buffers,
e.g. ``[struct head, aad, plaintext]``, to be written where they go without a join) and
``decode`` (one ``unpack_from`` per run of fixed-size fields, the length prefixes
included), and every ``message`` class a generated construction check and a trusted
``from_values`` (a decoded value already has its field's size and range; only its
``conv``/``text`` still runs). Code generation is the technique of ``dataclasses``: the
source is built from the layout table alone, never from data.
"""
from __future__ import annotations

import functools
import operator
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Any, ClassVar, TypeVar, dataclass_transform

__all__ = [
    "I64",
    "REST",
    "U8",
    "U16",
    "U32",
    "U64",
    "VAR8",
    "VAR16",
    "VAR32",
    "DecodeError",
    "Field",
    "Layout",
    "Message",
    "Tagged",
    "const",
    "fixed",
    "message",
    "pad",
]

Buffer = bytes | bytearray | memoryview


class DecodeError(ValueError):
    """Bytes that do not fit their layout: the one exception a decoder raises."""


_INT = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q", "i8": "b", "i16": "h", "i32": "i", "i64": "q"}
_VAR = {"var8": "B", "var16": "H", "var32": "I"}
_BYTES = {"fixed", "rest", *_VAR}
_PAD_CODE = {1: "B", 2: "H", 4: "I", 8: "Q"}


def _int_range(kind: str) -> tuple[int, int]:
    bits = 8 * struct.calcsize(_INT[kind])
    return (-(1 << (bits - 1)), 1 << (bits - 1)) if kind.startswith("i") else (0, 1 << bits)


@dataclass(frozen=True)
class Field:
    """One field of a layout (see the module docstring for the kinds)."""

    kind: str
    size: int = 0  #: fixed / pad: the byte count
    conv: Any = None  #: integer kinds: raw value -> attribute (an enum, a flag type, a checker)
    text: str | None = None  #: byte kinds: the attribute is UTF-8 text, decoded with these errors
    value: int | None = None  #: integer kinds: a constant the field must have (no attribute)
    raw: Callable[[Any], int] | None = None  #: integer kinds: attribute -> raw value

    def __post_init__(self) -> None:
        if self.kind not in _INT and self.kind not in _BYTES and self.kind != "pad":
            raise ValueError(f"unknown field kind {self.kind!r}")
        if self.value is not None and self.kind not in _INT:
            raise ValueError("only an integer field can be a constant")
        if self.kind in ("fixed", "pad") and self.size < 0:
            raise ValueError("negative size")

    @property
    def visible(self) -> bool:
        return self.kind != "pad" and self.value is None

    @property
    def struct_code(self) -> str | None:
        """The ``struct`` code of a fixed-size field; None for var / rest."""
        if self.kind in _INT:
            return _INT[self.kind]
        if self.kind == "pad":  # read as an integer when it is one, so the zero check is cheap
            return _PAD_CODE.get(self.size, f"{self.size}s")
        if self.kind == "fixed":
            return f"{self.size}s"
        return None


def const(kind: str, value: int) -> Field:
    """An integer of ``kind`` that must equal ``value`` (a frame kind, a magic number)."""
    return Field(kind, value=value)


def fixed(size: int) -> Field:
    return Field("fixed", size)


def pad(size: int) -> Field:
    return Field("pad", size)


U8, U16, U32, U64, I64 = Field("u8"), Field("u16"), Field("u32"), Field("u64"), Field("i64")
VAR8, VAR16, VAR32, REST = Field("var8"), Field("var16"), Field("var32"), Field("rest")


class _Run:
    """Consecutive fixed-size fields: one struct, and what each of its slots is."""

    __slots__ = ("checks", "expected", "hidden", "pick", "plain", "slots", "st", "visible")

    def __init__(self, specs: list[tuple[Field, int | None]]):
        self.st = struct.Struct("<" + "".join(f.struct_code or "" for f, _ in specs))
        self.slots = specs  # (field, visible index or None)
        self.visible = tuple(i for i, (_f, v) in enumerate(specs) if v is not None)
        self.checks = tuple((i, f) for i, (f, v) in enumerate(specs) if v is None)
        self.plain = not self.checks
        # the constants and padding: compared as one tuple; the visible values: one itemgetter
        self.hidden = _getter(tuple(i for i, _f in self.checks))
        self.expected = tuple(f.value if f.value is not None else _zero(f) for _i, f in self.checks)
        self.pick = _getter(self.visible)


def _getter(indices: tuple[int, ...]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    if len(indices) == 1:
        i = indices[0]
        return lambda raw: (raw[i],)
    return operator.itemgetter(*indices) if indices else (lambda raw: ())


def _zero(f: Field) -> Any:
    return 0 if f.size in _PAD_CODE else bytes(f.size)


# -- code generation (compiled once per layout; the source comes from the field table only) ----
def _generate(name: str, lines: list[str], env: dict[str, Any]) -> Any:
    namespace: dict[str, Any] = {}
    exec(compile("\n".join(lines), f"<layout {name}>", "exec"), env, namespace)
    return namespace[name]


def _as_bytes(value: Any) -> Any:
    """A byte field's value as a buffer to write: text encoded, byte buffers as they are (no copy)."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, memoryview):
        return value if value.format == "B" and value.ndim == 1 else value.cast("B")
    return value if isinstance(value, bytearray) else bytes(value)


def _gen_encode_parts(fields: Sequence[Field], names: Sequence[str] | None = None) -> Callable[[Any], list[Any]]:
    """``values -> [buffer, ...]``: fixed-size fields and length prefixes packed together,
    byte fields as they are (bytes pass through, text is encoded, other buffers copied).
    With ``names``: ``message -> [buffer, ...]``, reading the attributes directly."""
    arg = "v" if names is None else "self"

    def value(slot: int) -> str:
        return f"v[{slot}]" if names is None else f"self.{names[slot]}"

    env: dict[str, Any] = {"_as_bytes": _as_bytes}
    body: list[str] = []
    parts: list[str] = []
    fmt: list[str] = []
    args: list[str] = []

    def flush() -> None:
        if fmt:
            st = f"_s{len(env)}"
            env[st] = struct.Struct("<" + "".join(fmt)).pack
            parts.append(f"{st}({', '.join(args)})")
            fmt.clear()
            args.clear()

    slot = 0
    for f in fields:
        if f.kind == "pad":
            fmt.append(f"{f.size}x")
            continue
        if f.kind in _INT:
            fmt.append(_INT[f.kind])
            if f.value is not None:
                args.append(repr(int(f.value)))
            elif f.raw is not None:
                env[f"_raw{slot}"] = f.raw
                args.append(f"_raw{slot}({value(slot)})")
            else:
                args.append(value(slot))
            slot += 1 if f.value is None else 0
            continue
        body.append(f"    b{slot} = {value(slot)}")
        body.append(f"    if b{slot}.__class__ is not bytes: b{slot} = _as_bytes(b{slot})")
        if f.kind in _VAR:
            fmt.append(_VAR[f.kind])
            args.append(f"len(b{slot})")
        flush()
        parts.append(f"b{slot}")
        slot += 1
    flush()
    lines = [f"def encode_parts({arg}):", *body, f"    return [{', '.join(parts)}]"]
    return _generate("encode_parts", lines, env)


def _gen_decode(fields: Sequence[Field], runs: list[_Run], views: bool = False,
                build: tuple[type, Layout] | None = None) -> Callable[[Any], Any]:
    """``buffer -> raw visible values`` for a buffer holding exactly the layout; DecodeError if not.

    Runs of fixed-size fields (with the length prefixes and fixed byte fields) are one
    ``unpack_from`` each; every length is checked against what is left before it is used.
    With ``views``, variable byte fields are slices of the buffer, not copies. With ``build``
    (a message class and its layout): ``buffer -> message``, decode and trusted construction
    in one function (any buffer; not a byte view yet: made one)."""
    copy = "" if views else "bytes"
    env: dict[str, Any] = {"_E": DecodeError, "_checked": Layout._checked, "_view": _view}
    body = ["    n = len(d)", "    p = 0"]
    if build is not None and not views:  # bytes and flat byte views are sliced as they are
        body.insert(0, "    if d.__class__ is not bytes and (d.__class__ is not memoryview or d.format != 'B'"
                       " or d.ndim != 1): d = _view(d)")
    out: dict[int, str] = {}
    specs: list[tuple[Field, int | None]] = []
    fmt: list[str] = []
    names: list[str | None] = []  # per struct slot: a value name, a prefix name or None (hidden)
    tails = {}
    pos_of_rest = next((i for i, f in enumerate(fields) if f.kind == "rest"), None)
    if pos_of_rest is not None:
        tails[pos_of_rest] = sum(struct.calcsize("<" + (g.struct_code or "")) for g in fields[pos_of_rest + 1:])

    def flush() -> None:
        if not fmt:
            return
        k = len(runs)
        run = _Run(specs[:])
        runs.append(run)
        st = struct.Struct("<" + "".join(fmt))
        env[f"_u{k}"] = st.unpack_from
        env[f"_r{k}"] = run
        body.append(f"    if n - p < {st.size}: raise _E('payload too short')")
        body.append(f"    r = _u{k}(d, p)")
        body.append(f"    p += {st.size}")
        if run.checks:
            hidden = ", ".join(f"r[{i}]" for i, _f in run.checks)
            env[f"_x{k}"] = run.expected
            body.append(f"    if ({hidden},) != _x{k}: _checked(_r{k}, r)")
        for i, nm in enumerate(names):
            if nm is not None:
                body.append(f"    {nm} = r[{i}]")
        fmt.clear()
        names.clear()
        specs.clear()

    slot = 0
    for pos, f in enumerate(fields):
        visible = f.visible
        if f.struct_code is not None:  # an integer, a constant, padding, fixed(n)
            fmt.append(f.struct_code)
            specs.append((f, slot if visible else None))
            names.append(f"a{slot}" if visible else None)
            if visible:
                out[slot] = f"a{slot}"
                slot += 1
            continue
        if f.kind in _VAR:
            fmt.append(_VAR[f.kind])
            specs.append((Field(f.kind.replace("var", "u")), slot))
            names.append(f"l{slot}")
            flush()
            body.append(f"    if n - p < l{slot}: raise _E('length prefix runs past the payload')")
            body.append(f"    a{slot} = {copy}(d[p:p + l{slot}])")
            body.append(f"    p += l{slot}")
        else:  # rest
            flush()
            tail = tails[pos]
            body.append(f"    if n - p < {tail}: raise _E('payload too short')")
            body.append(f"    a{slot} = {copy}(d[p:n - {tail}])")
            body.append(f"    p = n - {tail}")
        out[slot] = f"a{slot}"
        slot += 1
    flush()
    body.append("    if p != n: raise _E('trailing bytes after the payload')")
    if build is not None:
        cls, layout = build
        env.update({"_new": object.__new__, "_cls": cls})
        body.append("    o = _new(_cls)")
        for i, (f, name, check) in enumerate(zip(layout.visible_specs, layout.names, layout._checks, strict=True)):
            env[f"_d{i}"] = getattr(cls, name).__set__
            if f.conv is not None or f.text is not None:
                env[f"_c{i}"] = check
                body.append("    try:")
                body.append(f"        _d{i}(o, _c{i}({out[i]}))")
                body.append("    except (ValueError, TypeError) as exc:")
                body.append("        raise _E(str(exc)) from None")
            else:
                body.append(f"    _d{i}(o, {out[i]})")
        return _generate("decode", ["def decode(d):", *body, "    return o"], env)
    values = ", ".join(out[i] for i in range(slot))
    lines = ["def decode(d):", *body, f"    return ({values}{',' if slot == 1 else ''})"]
    return _generate("decode", lines, env)


class Layout:
    """A compiled field table: ``encode(values)``, ``decode(data)``, ``check(values)``.

    ``values`` are the visible fields' values in order. ``decode`` returns raw values (ints,
    bytes); ``check`` turns them (or constructor arguments) into attribute values.
    """

    def __init__(self, specs: Sequence[Field], names: Sequence[str] | None = None):
        self.fields = tuple(specs)
        visible = [f for f in self.fields if f.visible]
        self.names = tuple(names) if names is not None else tuple(f"field {i}" for i in range(len(visible)))
        if len(self.names) != len(visible):
            raise ValueError(f"{len(visible)} visible fields, {len(self.names)} names")
        rests = [i for i, f in enumerate(self.fields) if f.kind == "rest"]
        if len(rests) > 1:
            raise ValueError("at most one rest field")
        if rests and any(f.struct_code is None for f in self.fields[rests[0] + 1:]):
            raise ValueError("only fixed-size fields may follow a rest field")
        self.visible_specs = tuple(visible)
        # segments: _Run | ("var", prefix Struct, index) | ("rest", index, tail size)
        self.segments: list[Any] = []
        run: list[tuple[Field, int | None]] = []
        index = 0
        for pos, f in enumerate(self.fields):
            slot = None
            if f.visible:
                slot, index = index, index + 1
            if f.struct_code is not None:
                run.append((f, slot))
                continue
            if run:
                self.segments.append(_Run(run))
                run = []
            if f.kind in _VAR:
                self.segments.append(("var", struct.Struct("<" + _VAR[f.kind]), slot))
            else:
                tail = sum(struct.calcsize("<" + (g.struct_code or "")) for g in self.fields[pos + 1:])
                self.segments.append(("rest", slot, tail))
        if run:
            self.segments.append(_Run(run))
        self.size: int | None = None  #: the byte size when every field has a fixed size
        if all(isinstance(s, _Run) for s in self.segments):
            self.size = sum(s.st.size for s in self.segments)
        self.struct: struct.Struct | None = (
            self.segments[0].st if len(self.segments) == 1 and isinstance(self.segments[0], _Run) else None)
        self.nvisible = index
        self._pack: Callable[..., bytes] | None = None
        if self.struct is not None:  # pack(): padding as struct pad bytes, leading constants bound once
            only: _Run = self.segments[0]
            self._template = [_zero(f) if f.value is None else f.value for f, _slot in only.slots]
            consts = [f for f, slot in only.slots if f.kind != "pad" and slot is None]
            leading = next((i for i, (f, slot) in enumerate(only.slots) if slot is not None), len(only.slots))
            if all(f.kind == "pad" or f.value is None or i < leading for i, (f, _s) in enumerate(only.slots)):
                fmt = "<" + "".join(f"{f.size}x" if f.kind == "pad" else (f.struct_code or "") for f, _s in only.slots)
                self._pack = functools.partial(struct.Struct(fmt).pack, *(f.value for f in consts))
                self.pack = self._pack  # type: ignore[method-assign]  # the bound fast path, no wrapper
            self.unpack_from = self._compile_unpack(only)  # type: ignore[method-assign]
        self._checks = tuple(self._checker(f, n) for f, n in zip(visible, self.names, strict=True))
        #: the wire bytes of ``values`` as a list of buffers (generated; see ``_gen_encode_parts``)
        self.encode_parts: Callable[[Sequence[Any]], list[Any]] = _gen_encode_parts(self.fields)
        if self.struct is None:  # a variable layout: a generated decoder (fixed ones have their fast path)
            self._decode_var = _gen_decode(self.fields, [])
            self._decode_views = _gen_decode(self.fields, [], views=True)

    # -- construction-time checks ---------------------------------------------------------
    @staticmethod
    def _checker(spec: Field, name: str) -> Callable[[Any], Any]:
        if spec.kind in _INT:
            lo, hi = _int_range(spec.kind)
            conv, raw = spec.conv, spec.raw

            def check_int(value: Any) -> Any:
                if conv is not None:
                    value = conv(value)  # ValueError for unknown enum values
                number = raw(value) if raw is not None else int(value)
                if not lo <= number < hi:
                    raise ValueError(f"{name} out of range")
                return value

            return check_int
        limit = 1 << (8 * struct.calcsize(_VAR[spec.kind])) if spec.kind in _VAR else None
        size = spec.size if spec.kind == "fixed" else None
        text = spec.text

        def check_bytes(value: Any) -> Any:
            if text is not None:
                if isinstance(value, (bytes, bytearray, memoryview)):
                    value = bytes(value).decode("utf-8", text)
                if not isinstance(value, str):
                    raise TypeError(f"{name} must be text")
                n = len(value.encode("utf-8"))
            else:
                if not isinstance(value, (bytes, bytearray, memoryview)):
                    raise TypeError(f"{name} must be bytes")
                value = bytes(value)
                n = len(value)
            if size is not None and n != size:
                raise ValueError(f"{name} must be {size} bytes")
            if limit is not None and n >= limit:
                raise ValueError(f"{name} too long for its length prefix")
            return value

        return check_bytes

    def check(self, values: Sequence[Any]) -> list[Any]:
        return [c(v) for c, v in zip(self._checks, values, strict=False)]

    # -- encode -----------------------------------------------------------------------------
    def encode(self, values: Sequence[Any]) -> bytes:
        parts = self.encode_parts(values)
        return parts[0] if len(parts) == 1 and parts[0].__class__ is bytes else b"".join(parts)

    def encode_generic(self, values: Sequence[Any]) -> bytes:
        """The table-walking encoder ``encode_parts`` was generated from (kept as its reference)."""
        out = []
        specs = self.visible_specs
        for seg in self.segments:
            if isinstance(seg, _Run):
                args = []
                for f, slot in seg.slots:
                    if slot is None:
                        args.append(_zero(f) if f.value is None else f.value)
                    else:
                        args.append(self._raw(f, values[slot]))
                out.append(seg.st.pack(*args))
            elif seg[0] == "var":
                data = self._bytes(specs[seg[2]], values[seg[2]])
                out.append(seg[1].pack(len(data)))
                out.append(data)
            else:
                out.append(self._bytes(specs[seg[1]], values[seg[1]]))
        return b"".join(out)

    def pack(self, *values: Any) -> bytes:
        """A fixed-size layout from raw values (ints, bytes): one ``struct.pack``, no checks."""
        if self._pack is not None:
            return self._pack(*values)
        assert self.struct is not None, "pack needs a fixed-size layout"
        run = self.segments[0]
        if run.plain:
            return self.struct.pack(*values)
        args = list(self._template)
        for i, value in zip(run.visible, values, strict=False):  # pack() is the unchecked path
            args[i] = value
        return self.struct.pack(*args)

    @staticmethod
    def _raw(f: Field, value: Any) -> Any:
        if f.kind in _INT:
            return f.raw(value) if f.raw is not None else int(value)
        return value.encode("utf-8") if isinstance(value, str) else bytes(value)

    @staticmethod
    def _bytes(f: Field, value: Any) -> bytes:
        return value.encode("utf-8") if isinstance(value, str) else bytes(value)

    # -- decode -----------------------------------------------------------------------------
    def decode(self, data: Buffer) -> Sequence[Any]:
        """Raw visible values of a buffer that holds exactly this layout; DecodeError if not."""
        if self.struct is None:  # generated; bytes are sliced as they are, anything else as a byte view
            return self._decode_var(data if data.__class__ is bytes else _view(data))
        view = _view(data)  # one fixed-size record: the fast path
        if len(view) != self.struct.size:
            raise DecodeError(f"{len(view)} bytes, the layout has {self.struct.size}")
        return self._from_run(self.segments[0], self.struct.unpack_from(view))

    def decode_views(self, data: memoryview) -> Sequence[Any]:
        """``decode``, with variable byte fields as slices of ``data`` instead of copies: for a
        byte view of an immutable ``bytes`` object (a private copy the views cannot outlive in
        meaning), e.g. a request a service copied out of shared memory."""
        if self.struct is None:
            return self._decode_views(data)
        return self.decode(data)

    def decode_generic(self, data: Buffer) -> Sequence[Any]:
        """The table-walking decoder the generated one follows (kept as its reference)."""
        view = _view(data)
        values, pos = self.decode_from(view, 0)
        if pos != len(view):
            raise DecodeError("trailing bytes after the payload")
        return values

    def unpack_from(self, data: Buffer, offset: int = 0) -> Sequence[Any]:
        """A fixed-size layout at ``offset`` (more bytes may follow); DecodeError if short."""
        if self.struct is None:
            raise TypeError("unpack_from needs a fixed-size layout")
        if offset < 0 or len(data) - offset < self.struct.size:
            raise DecodeError(f"{max(len(data) - offset, 0)} bytes, the layout has {self.struct.size}")
        return self._from_run(self.segments[0], self.struct.unpack_from(data, offset))

    def _compile_unpack(self, run: _Run) -> Callable[..., tuple[Any, ...]]:
        """``unpack_from`` specialised for this record: one struct call, one comparison, one itemgetter."""
        unpack, size, pick, checked = run.st.unpack_from, run.st.size, run.pick, self._checked

        def short(data: Buffer, offset: int) -> DecodeError:
            return DecodeError(f"{max(len(data) - max(offset, 0), 0)} bytes, the layout has {size}")

        if run.plain:
            def unpack_plain(data: Buffer, offset: int = 0) -> tuple[Any, ...]:
                try:
                    if offset >= 0:
                        return unpack(data, offset)
                except struct.error:
                    pass
                raise short(data, offset)

            return unpack_plain
        if len(run.checks) == 1:
            (i, _f), (want,) = run.checks[0], run.expected

            def unpack_one(data: Buffer, offset: int = 0) -> tuple[Any, ...]:
                try:
                    raw = unpack(data, offset) if offset >= 0 else None
                except struct.error:
                    raw = None
                if raw is None:
                    raise short(data, offset)
                if raw[i] != want:
                    checked(run, raw)
                return pick(raw)

            return unpack_one
        hidden, expected = run.hidden, run.expected

        def unpack_from(data: Buffer, offset: int = 0) -> tuple[Any, ...]:
            try:
                raw = unpack(data, offset) if offset >= 0 else None
            except struct.error:
                raw = None
            if raw is None:
                raise short(data, offset)
            if hidden(raw) != expected:
                checked(run, raw)
            return pick(raw)

        return unpack_from

    def decode_from(self, view: memoryview, pos: int) -> tuple[list[Any], int]:
        """Raw visible values from ``pos``, and the position after them."""
        values: list[Any] = [None] * self.nvisible
        end = len(view)
        for seg in self.segments:
            if isinstance(seg, _Run):
                if end - pos < seg.st.size:
                    raise DecodeError("payload too short")
                raw = seg.st.unpack_from(view, pos)
                pos += seg.st.size
                for (_f, slot), value in zip(seg.slots, self._checked(seg, raw), strict=True):
                    if slot is not None:
                        values[slot] = value
            elif seg[0] == "var":
                prefix = seg[1]
                if end - pos < prefix.size:
                    raise DecodeError("payload too short")
                (n,) = prefix.unpack_from(view, pos)
                pos += prefix.size
                if end - pos < n:
                    raise DecodeError("length prefix runs past the payload")
                values[seg[2]] = bytes(view[pos:pos + n])
                pos += n
            else:
                tail = seg[2]
                if end - pos < tail:
                    raise DecodeError("payload too short")
                values[seg[1]] = bytes(view[pos:end - tail])
                pos = end - tail
        return values, pos

    def decode_repeated(self, data: Buffer) -> list[list[Any]]:
        """The buffer as this layout again and again to its end (e.g. a list of var32 blobs)."""
        view, pos, out = _view(data), 0, []
        while pos < len(view):
            values, pos = self.decode_from(view, pos)
            out.append(values)
        return out

    @staticmethod
    def _checked(run: _Run, raw: tuple[Any, ...]) -> tuple[Any, ...]:
        if run.hidden(raw) == run.expected:
            return raw
        for i, f in run.checks:  # say which one
            if f.value is not None and raw[i] != f.value:
                raise DecodeError(f"expected {f.value:#x}, got {raw[i]:#x}")
        raise DecodeError("padding is not zero")

    def _from_run(self, run: _Run, raw: tuple[Any, ...]) -> tuple[Any, ...]:
        if run.plain:
            return raw
        self._checked(run, raw)
        return run.pick(raw)


class Tagged:
    """``u8 tag | payload``, the tag picking the payload's layout (an operation code, a type).

    ``encode(tag, obj)`` takes the payload's values from ``obj``'s attributes (the layout's
    names); ``decode(data)`` gives ``(tag, {name: checked value})`` or raises ``DecodeError``
    (an unknown tag, a payload that does not fit, a value its field refuses).
    """

    def __init__(self, layouts: Mapping[int, Layout]):
        self.layouts = {int(tag): layout for tag, layout in layouts.items()}

    def encode(self, tag: int, obj: Any) -> bytes:
        layout = self.layouts[int(tag)]
        return bytes([int(tag)]) + layout.encode([getattr(obj, name) for name in layout.names])

    def decode(self, data: Buffer) -> tuple[int, dict[str, Any]]:
        view = _view(data)
        if not view:
            raise DecodeError("empty message")
        layout = self.layouts.get(view[0])
        if layout is None:
            raise DecodeError(f"unknown tag {view[0]}")
        try:
            values = layout.check(layout.decode(view[1:]))
        except DecodeError:
            raise
        except (ValueError, TypeError) as exc:
            raise DecodeError(str(exc)) from None
        return view[0], dict(zip(layout.names, values, strict=True))


def _view(data: Buffer) -> memoryview:
    try:
        return memoryview(data).cast("B")
    except TypeError as exc:  # not a flat byte buffer
        raise DecodeError(f"not a byte buffer: {exc}") from None


M = TypeVar("M", bound="Message")
_T = TypeVar("_T")


class Message:
    """Base of ``message`` classes: encode, decode and checks derived from ``LAYOUT``."""

    __slots__ = ()
    LAYOUT: ClassVar[tuple[Field, ...]]
    _layout: ClassVar[Layout]

    def __post_init__(self) -> None:
        layout = self._layout
        for name, check in zip(layout.names, layout._checks, strict=True):
            value = getattr(self, name)
            checked = check(value)
            if checked is not value:
                object.__setattr__(self, name, checked)

    def to_payload(self) -> bytes:
        return self._layout.encode(self._values())

    def payload_parts(self) -> list[Any]:
        """The payload as a few buffers (fixed-size fields packed, byte fields as they are)."""
        return self._layout.encode_parts(self._values())

    def _values(self) -> tuple[Any, ...]:  # replaced per class by an attrgetter
        return tuple(getattr(self, name) for name in self._layout.names)

    @classmethod
    def from_payload(cls: type[M], data: Buffer) -> M:
        """Decode; ``DecodeError`` on any layout violation."""
        return cls.from_values(cls._layout.decode(data))

    @classmethod
    def from_payload_views(cls: type[M], data: memoryview) -> M:
        """``from_payload`` of a byte view of immutable bytes, variable byte fields as views."""
        return cls.from_values(cls._layout.decode_views(data))

    @classmethod
    def from_values(cls: type[M], values: Sequence[Any]) -> M:
        """Raw decoded values -> a checked message; ``DecodeError`` if a value is refused."""
        try:
            return cls(*values)
        except (ValueError, TypeError) as exc:  # an unknown enum value, text that is not UTF-8
            raise DecodeError(str(exc)) from None


def _gen_post_init(cls: type, layout: Layout) -> Callable[[Any], None]:
    """The construction check: the common case (an ``int`` in range, ``bytes`` of a fitting
    size) inline; anything else goes through the field's checker, which converts or refuses."""
    env: dict[str, Any] = {"_set": object.__setattr__}
    body: list[str] = []
    for i, (f, name, check) in enumerate(zip(layout.visible_specs, layout.names, layout._checks, strict=True)):
        env[f"_c{i}"] = check
        body.append(f"    v = self.{name}")
        if f.kind in _INT and f.conv is None and f.raw is None:
            lo, hi = _int_range(f.kind)
            body.append(f"    if v.__class__ is not int or not {lo} <= v < {hi}:")
            body.append(f"        c = _c{i}(v)")
            body.append(f"        _set(self, {name!r}, int(c))")
            continue
        if f.kind in _BYTES and f.text is None:
            if f.kind == "fixed":
                fits = f"len(v) == {f.size}"
            elif f.kind in _VAR:
                fits = f"len(v) < {1 << (8 * struct.calcsize(_VAR[f.kind]))}"
            else:
                fits = "True"
            body.append(f"    if v.__class__ is not bytes or not {fits}:")
            body.append(f"        c = _c{i}(v)")
            body.append(f"        if c is not v: _set(self, {name!r}, c)")
            continue
        body.append(f"    c = _c{i}(v)")
        body.append(f"    if c is not v: _set(self, {name!r}, c)")
    return _generate("__post_init__", ["def __post_init__(self):", *(body or ["    pass"])], env)


def _gen_from_values(cls: type, layout: Layout) -> Callable[[Sequence[Any]], Any]:
    """Trusted construction from decoded values: sizes and ranges already hold (the decoder
    checked them); only ``conv`` (enums, flag checks) and ``text`` still run."""
    env: dict[str, Any] = {"_new": object.__new__, "_cls": cls, "_E": DecodeError}
    body = ["    o = _new(_cls)"]
    for i, (f, name, check) in enumerate(zip(layout.visible_specs, layout.names, layout._checks, strict=True)):
        env[f"_d{i}"] = getattr(cls, name).__set__
        if f.conv is not None or f.text is not None:
            env[f"_c{i}"] = check
            body.append(f"    _d{i}(o, _c{i}(v[{i}]))")
        else:
            body.append(f"    _d{i}(o, v[{i}])")
    body.append("    return o")
    lines = ["def from_values(v):", "  try:", *("  " + line for line in body),
             "  except (ValueError, TypeError) as exc:", "    raise _E(str(exc)) from None"]
    return _generate("from_values", lines, env)


@dataclass_transform(frozen_default=True)
def message(*specs: Field) -> Callable[[type[_T]], type[_T]]:
    """Class decorator: a frozen slotted dataclass, a ``Message``, with this layout.

    The layout's visible fields bind, in order, to the dataclass fields.
    """

    def wrap(cls: type) -> Any:
        if not issubclass(cls, Message):
            namespace = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
            cls = type(cls.__name__, (Message,), namespace)
        cls.LAYOUT = specs  # type: ignore[attr-defined]
        cls = dataclass(frozen=True, slots=True)(cls)
        names = [f.name for f in dataclass_fields(cls) if f.init]
        made: Any = cls
        layout = made._layout = Layout(specs, names)
        if names:
            getter = operator.attrgetter(*names)
            made._values = (lambda self: getter(self)) if len(names) > 1 else (lambda self: (getter(self),))
        else:
            made._values = lambda self: ()
        made.payload_parts = _gen_encode_parts(specs, names)
        if made.__post_init__ is Message.__post_init__:  # the table is the whole check: compile it
            made.__post_init__ = _gen_post_init(made, layout)
            made.from_values = staticmethod(_gen_from_values(made, layout))
            if layout.struct is None:  # decode + trusted construction in one generated function
                made.from_payload = staticmethod(_gen_decode(specs, [], build=(made, layout)))
                made.from_payload_views = staticmethod(_gen_decode(specs, [], views=True, build=(made, layout)))
        return made

    return wrap
