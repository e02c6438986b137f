"""Per-key nonce bookkeeping: encrypt nonces that never repeat, and a decrypt replay window.

Encrypt: ``NonceSequence``
==========================

WvdS: the service makes the 12-byte GCM nonce, the client can never choose
one, and a nonce is used once. Ninety-six random bits only make a repeat
*unlikely*; issue 3 asks for *never*, across restarts too. So we use the
deterministic construction of NIST SP 800-38D section 8.2.1::

    nonce = salt (4 bytes) || counter (8 bytes, big-endian)

- ``counter`` is per key (per key version) and only ever increases. Before a
  counter value is used, a *lease* covering it is persisted: the service
  stores ``lease_end = counter + block`` with the key (one store write per
  ``block`` encryptions, default 65536) and only then hands out counters
  below ``lease_end``. After a crash or restart the sequence resumes at the
  persisted ``lease_end``; at most one unused lease is skipped, nothing is
  repeated.
- ``salt`` is 4 CSPRNG bytes drawn per key each time the service starts. It
  is defence in depth, not the guarantee: if the key store is ever rolled back
  to an older copy (backup restore, VM snapshot), counters would replay, and
  then only a salt collision (2^-32 per pair of starts) would repeat a nonce.
  The same holds if one raw AES key is imported under two key ids.
- 2^64 - 1 counter values per key version (the lease end must fit a u64);
  after that ``NonceExhausted`` (the service answers CRYPTO_ERROR; rotate).

Deviation from the WvdS text, on purpose: 32 of the 96 bits are random, the
other 64 are a counter. Uniqueness, which is what GCM needs, is guaranteed
instead of probable.

Decrypt: ``ReplayWindow``
=========================

WvdS: nonces seen in decrypt requests are kept per key in a Bloom filter with
a window of one million; a repeat gets 0x08 NONCE_REUSE; rotation resets it.

*Why not an exact set*: one million 12-byte nonces in a Python ``set`` plus a
FIFO ``deque`` for eviction measured 87 MB per key (tracemalloc). A Bloom
filter at the rate below needs at most about 9 MB per key, and far less for a
key that sees few decrypts.

*Structure*: two generations; each holds up to ``window`` nonces. A lookup
checks both, an insert goes to the current one; when it holds ``window``
nonces it becomes the previous one and the old previous is dropped. So the
last ``window`` to ``2 * window`` nonces are always remembered (window >= 1e6
as WvdS asks). A generation is a *scalable* Bloom filter (Almeida et al.,
2007): slices of capacity 4096, x4, x16 ... allocated only when needed, so
memory grows with use. Slice ``i`` has ``k_i = ceil(log2(1/p_i))`` hashes and
``m_i = ceil(n_i * k_i / ln 2)`` bits, which gives a false-positive rate of at
most ``2^-k_i <= p_i`` when full, with ``p_i = (fp_rate / 2) * 2^-(i+1)``.

*Probe positions*: ``k`` independent hashes, ``g_j = H_j mod m`` where
``H_0 .. H_{K-1}`` are the 64-bit words of SHAKE128(window key || nonce), so
the textbook analysis (rate ``fill^k``) holds. Double hashing ``(h1 + j*h2) mod
m`` does not, at these parameters: with a composite ``m`` some ``h2`` probe only
a few distinct bits (measured: 8-13 times the documented rate); with a prime
``m`` the positions are distinct, but for ``k = 22`` on the 4096-item first
slice the exact rate, summed over every ``h1`` for sampled ``h2``, is still
about 7 times ``fill^k`` (1.7e-6 against 2.4e-7).

*False-positive rate* (a fresh nonce rejected as NONCE_REUSE): at most
``fp_rate`` (default 1e-6) at any fill level, by the union bound over at most
two generations of ``fp_rate / 2`` each. ``false_positive_bound()`` also
computes the bound from the actual bit fill. Positions come from a keyed
SHAKE128 of the nonce, the key drawn from the service RNG per window, so an
outsider cannot aim nonces at set bits, and tests with a seeded RNG are
deterministic.

Only nonces whose GCM tag verified are added (the service's job), so nobody
can poison the window with guessed future nonces.
"""

from __future__ import annotations

import hashlib
import math
import struct

NONCE_SIZE = 12
SALT_SIZE = 4
#: Exclusive bound on counters, so every lease end fits the store's u64 field.
COUNTER_LIMIT = (1 << 64) - 1
DEFAULT_LEASE_BLOCK = 1 << 16
DEFAULT_WINDOW = 1_000_000
DEFAULT_FP_RATE = 1e-6


class NonceExhausted(Exception):
    """The key version has used all 2^64 - 1 counter values."""


class NonceSequence:
    """Encrypt nonces for one key version in one service run."""

    __slots__ = ("block", "lease_end", "next_counter", "salt")

    def __init__(self, salt: bytes, start: int, block: int = DEFAULT_LEASE_BLOCK) -> None:
        """``start`` is the persisted lease end (0 for a new key)."""
        if len(salt) != SALT_SIZE:
            raise ValueError("salt must be 4 bytes")
        if block < 1:
            raise ValueError("lease block must be >= 1")
        self.salt = bytes(salt)
        self.next_counter = start
        self.lease_end = start  # nothing leased in this run yet
        self.block = block

    def lease_needed(self) -> int | None:
        """The lease end to persist before the next nonce, or None if covered.

        Raises NonceExhausted when no counter value is left.
        """
        if self.next_counter >= COUNTER_LIMIT:
            raise NonceExhausted
        if self.next_counter < self.lease_end:
            return None
        return min(self.next_counter + self.block, COUNTER_LIMIT)

    def grant_lease(self, lease_end: int) -> None:
        """Record that ``lease_end`` is now durably stored."""
        self.lease_end = max(self.lease_end, lease_end)

    def next_nonce(self) -> bytes:
        """The next nonce. Call only after ``lease_needed()`` returned None or
        the lease it asked for was persisted and granted."""
        if self.next_counter >= self.lease_end:
            raise RuntimeError("nonce counter not covered by a persisted lease")
        counter = self.next_counter
        self.next_counter += 1
        return self.salt + counter.to_bytes(8, "big")


def _slice_k(fp: float) -> int:
    return max(1, math.ceil(-math.log2(fp)))


class _Slice:
    """A plain Bloom filter sized for ``capacity`` items at rate ``2^-k``."""

    __slots__ = ("bits", "capacity", "count", "k", "m")

    def __init__(self, capacity: int, fp: float) -> None:
        self.capacity = capacity
        self.k = _slice_k(fp)
        self.m = math.ceil(capacity * self.k / math.log(2))
        self.bits = bytearray((self.m + 7) // 8)
        self.count = 0

    def positions(self, hashes: tuple[int, ...]) -> list[int]:
        """Bit positions from ``k`` independent 64-bit hashes."""
        m = self.m
        return [h % m for h in hashes[: self.k]]

    def add(self, hashes: tuple[int, ...]) -> None:
        bits = self.bits
        for p in self.positions(hashes):
            bits[p >> 3] |= 1 << (p & 7)
        self.count += 1

    def contains(self, hashes: tuple[int, ...]) -> bool:
        bits, m = self.bits, self.m
        for h in hashes[: self.k]:  # stop at the first clear bit
            p = h % m
            if not bits[p >> 3] & (1 << (p & 7)):
                return False
        return True

    def fill_bound(self) -> float:
        """Probability that a fresh item hits k set bits, from the real fill."""
        ones = sum(bin(b).count("1") for b in self.bits) if self.count else 0
        return (ones / self.m) ** self.k


class _Generation:
    """A scalable Bloom filter holding at most ``window`` items."""

    __slots__ = ("count", "first", "fp_rate", "slices", "window")

    def __init__(self, window: int, fp_rate: float, first: int) -> None:
        self.window, self.fp_rate, self.first = window, fp_rate, first
        self.slices: list[_Slice] = []
        self.count = 0

    def full(self) -> bool:
        return self.count >= self.window

    def add(self, hashes: tuple[int, ...]) -> None:
        if not self.slices or self.slices[-1].count >= self.slices[-1].capacity:
            i = len(self.slices)
            capacity = min(self.first * 4**i, self.window - self.count)
            self.slices.append(_Slice(capacity, self.fp_rate * 2.0 ** -(i + 1)))
        self.slices[-1].add(hashes)
        self.count += 1

    def contains(self, hashes: tuple[int, ...]) -> bool:
        return any(s.contains(hashes) for s in self.slices)

    def max_k(self) -> int:
        """The most hashes any slice of a generation can need."""
        i, held = 0, 0
        while held < self.window:
            held += min(self.first * 4**i, self.window - held)
            i += 1
        return _slice_k(self.fp_rate * 2.0 ** -i)


class ReplayWindow:
    """Nonces seen by successful decrypts of one key version (see module doc)."""

    __slots__ = ("_current", "_first", "_key", "_previous", "_words", "fp_rate", "window")

    def __init__(
        self,
        hash_key: bytes,
        window: int = DEFAULT_WINDOW,
        fp_rate: float = DEFAULT_FP_RATE,
        first_slice: int = 4096,
    ) -> None:
        if window < 1 or not 0 < fp_rate < 1 or first_slice < 1:
            raise ValueError("window >= 1, 0 < fp_rate < 1, first_slice >= 1")
        if not 16 <= len(hash_key) <= 64:
            raise ValueError("hash key must be 16..64 bytes")
        self.window, self.fp_rate = window, fp_rate
        self._key = bytes(hash_key)
        self._first = min(first_slice, window)
        self._current = self._new_generation()
        self._previous: _Generation | None = None
        self._words = struct.Struct(f"<{self._current.max_k()}Q")

    def _new_generation(self) -> _Generation:
        # Each generation gets half of the budget: union bound over two.
        return _Generation(self.window, self.fp_rate / 2, self._first)

    def _hash(self, nonce: bytes) -> tuple[int, ...]:
        words = self._words
        return words.unpack(hashlib.shake_128(self._key + bytes(nonce)).digest(words.size))

    def seen(self, nonce: bytes) -> bool:
        """True if ``nonce`` was added within the window (or, rarely, a false positive)."""
        hashes = self._hash(nonce)
        if self._current.contains(hashes):
            return True
        return self._previous is not None and self._previous.contains(hashes)

    def add(self, nonce: bytes) -> None:
        if self._current.full():
            self._previous, self._current = self._current, self._new_generation()
        self._current.add(self._hash(nonce))

    @property
    def count(self) -> int:
        """Nonces currently remembered (between ``window`` and ``2 * window`` once warm)."""
        return self._current.count + (self._previous.count if self._previous else 0)

    @property
    def memory_bytes(self) -> int:
        gens = [self._current] + ([self._previous] if self._previous else [])
        return sum(len(s.bits) for g in gens for s in g.slices)

    def false_positive_bound(self) -> float:
        """Union bound on the false-positive rate from the actual bit fill (<= fp_rate)."""
        gens = [self._current] + ([self._previous] if self._previous else [])
        return min(1.0, sum(s.fill_bound() for g in gens for s in g.slices))
