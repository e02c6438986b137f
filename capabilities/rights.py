"""Rights bits, with L4's real values (l4sys/include/__l4_fpage.h, consts.h).

Object capabilities carry ``CapRights``; memory mappings carry ``MemRights``.
Rights only ever shrink: every derivation is an intersection (``derive``).

Letters (as in Ned's ``cap:m("rws")``): r=R, w=W, s=S, d=D, c=gate-server.
``svr`` is Ned's ``cap:svr()``: the full server side of an IPC gate.
"""
from __future__ import annotations

import enum


class CapRights(enum.IntFlag):
    """L4_cap_fpage_rights plus the gate-server attribute (L4_FPAGE_C_IPCGATE_SVR)."""

    NONE = 0
    W = 0x1  #: interface-specific write (writable dataspace; Task::map destination)
    S = 0x2  #: special/server: bind gates and IRQs, invoke factories, pass S on
    R = 0x4  #: read/"exists"; always required, a cap without R is never mapped
    D = 0x8  #: delete the object, even while others hold caps to it
    SVR = 0x20  #: L4_FPAGE_C_IPCGATE_SVR: bind / get_infos on an IPC gate

    @classmethod
    def parse(cls, letters: str) -> CapRights:
        """Parse Ned-style letters (``"rw"``, ``"rws"``, ``"svr"``); R is always implied.

        Raises ``ValueError`` naming the first unknown letter: unlike Ned, an unknown
        letter is an error, never silently ignored (docs/violations.md V23; Ned's
        ned/server/src/lua_cap.cc in https://github.com/kernkonzept/l4re-core skips it).
        """
        text = letters.strip().lower()
        if text == "svr":
            return cls.R | cls.W | cls.S | cls.D | cls.SVR
        rights = cls.R
        for ch in text:
            try:
                rights |= _LETTERS[ch]
            except KeyError:
                raise ValueError(
                    f"unknown rights letter {ch!r} in {letters!r} (expected letters from 'rwsdc' or 'svr')"
                ) from None
        return rights

    def letters(self) -> str:
        """The canonical letter form, e.g. ``'rws'``; ``'svr'`` for the full gate server side."""
        if self == CapRights.parse("svr"):
            return "svr"
        return "".join(ch for ch, bit in _LETTERS.items() if bit in self) or "-"

    def covers(self, needed: CapRights) -> bool:
        return (self & needed) == needed


_LETTERS = {"r": CapRights.R, "w": CapRights.W, "s": CapRights.S, "d": CapRights.D, "c": CapRights.SVR}

#: Rights that are copied into an IPC gate's label (fiasco ipc_gate.cpp: ``_id | rights``).
LABEL_RIGHTS = CapRights.W | CapRights.S


class MemRights(enum.IntFlag):
    """L4_fpage_rights for memory: there is no separate R bit; RO is the read bit."""

    NONE = 0
    X = 0x1
    W = 0x2
    R = 0x4  #: L4_FPAGE_RO

    @classmethod
    def parse(cls, letters: str) -> MemRights:
        rights = cls.NONE
        for ch in letters.strip().lower():
            if ch == "r":
                rights |= cls.R
            elif ch == "w":
                rights |= cls.W | cls.R
            elif ch == "x":
                rights |= cls.X
            else:
                raise ValueError(f"unknown memory rights letter {ch!r} in {letters!r} (expected 'r', 'w', 'x')")
        return rights

    def letters(self) -> str:
        return "".join(ch for ch,
                       bit in (("r", MemRights.R), ("w", MemRights.W), ("x", MemRights.X)) if bit in self) or "-"


def derive_cap_rights(held: CapRights, requested: CapRights, *, partner_has_s: bool = True) -> CapRights:
    """Rights a receiver gets for an object cap: ``held ∩ requested``.

    S survives only if the cap used to address the IPC partner also has S
    (L4Re flexpage and capability rights, https://l4re.org/doc/group__l4__fpage__api.html).
    The result has no R -> nothing is mapped,
    which callers see as ``CapRights.NONE``.
    """
    rights = CapRights(held & requested)
    if not partner_has_s:
        rights &= ~CapRights.S
    if CapRights.R not in rights:
        return CapRights.NONE
    return rights


def derive_mem_rights(held: MemRights, requested: MemRights) -> MemRights:
    """Memory rights on transfer: ``held ∩ requested``; no R left -> nothing is mapped."""
    rights = MemRights(held & requested)
    if MemRights.R not in rights:
        return MemRights.NONE
    return rights
