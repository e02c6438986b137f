"""Rights: L4's bit values, letters, and derivation over every combination."""
from __future__ import annotations

import itertools

import pytest

from capabilities.rights import CapRights, MemRights, derive_cap_rights, derive_mem_rights

BITS = [CapRights.W, CapRights.S, CapRights.R, CapRights.D, CapRights.SVR]
ALL = [CapRights(sum(int(b) for b in combo)) for n in range(len(BITS) + 1) for combo in itertools.combinations(BITS, n)]


def test_bit_values_are_l4s():
    assert (CapRights.W, CapRights.S, CapRights.R, CapRights.D, CapRights.SVR) == (1, 2, 4, 8, 0x20)
    assert (MemRights.X, MemRights.W, MemRights.R) == (1, 2, 4)
    assert CapRights.parse("svr") == 0x2F  # Ned's cap:svr() minus the n/weak bits


@pytest.mark.parametrize("rights", [r for r in ALL if CapRights.R in r], ids=lambda r: r.letters())
def test_letters_round_trip(rights):
    assert CapRights.parse(rights.letters()) == rights


def test_r_is_always_implied_and_unknown_letters_are_errors():
    assert CapRights.parse("") == CapRights.R
    assert CapRights.parse("w") == CapRights.R | CapRights.W
    with pytest.raises(ValueError, match="unknown rights letter 'x'"):
        CapRights.parse("rwx")


@pytest.mark.parametrize("held", ALL, ids=lambda r: r.letters())
def test_derivation_never_adds_a_right(held):
    for requested in ALL:
        for partner_has_s in (True, False):
            got = derive_cap_rights(held, requested, partner_has_s=partner_has_s)
            assert got & ~held == 0 and got & ~requested == 0
            if CapRights.R not in held or CapRights.R not in requested:
                assert got == CapRights.NONE  # without R nothing is mapped
            else:
                assert CapRights.R in got
                assert (CapRights.S in got) == (CapRights.S in held and CapRights.S in requested and partner_has_s)
                assert (CapRights.W in got) == (CapRights.W in held and CapRights.W in requested)
                assert (CapRights.D in got) == (CapRights.D in held and CapRights.D in requested)
                assert (CapRights.SVR in got) == (CapRights.SVR in held and CapRights.SVR in requested)


@pytest.mark.parametrize("held,requested,expected", [
    ("rw", "rws", "rw"), ("r", "rw", "r"), ("svr", "rw", "rw"), ("rws", "rs", "rs"), ("rwsd", "rd", "rd"),
])
def test_derivation_examples(held, requested, expected):
    assert derive_cap_rights(CapRights.parse(held), CapRights.parse(requested)) == CapRights.parse(expected)


def test_memory_rights():
    for held, requested, expected in [("rw", "r", "r"), ("r", "rw", "r"), ("rwx", "rx", "rx")]:
        assert derive_mem_rights(MemRights.parse(held), MemRights.parse(requested)) == MemRights.parse(expected)
    assert derive_mem_rights(MemRights.W, MemRights.W) == MemRights.NONE  # no RO bit: nothing mapped
