"""The gateway rides out a restart of the crypto service instead of dying with it.

While the crypto service is being restarted by Moe (its supervision policy), a call to its gate is
answered at once with ``L4_IPC_ENOT_EXISTENT`` (the partner is gone); once Moe has given up on it
for good, every call is. `patient` tries such a call again with exponential backoff (the waits are
the kernel's receive timeouts, `env.sleep`) for at most ``Patience.total_s`` of waiting, then
reports the error as before. Any other error is reported at once.

A call that failed with ENOT_EXISTENT may still have been carried out if the service died while
answering it: an encryption tried again gets a fresh nonce (harmless); a key generation tried
again may leave one unused key in the service.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

from tasks.runtime.shm import ShmError


@dataclasses.dataclass(frozen=True)
class Patience:
    first_s: float = 0.1  #: the first wait after a call found the service gone
    max_s: float = 2.0  #: the longest single wait
    total_s: float = 60.0  #: give up after waiting this long in all (the service's restarts take less)


def patient(transact: Callable[[bytes], bytes], sleep: Callable[[float], None],
            patience: Patience = Patience(), log: Callable[[str], None] | None = None) -> Callable[[bytes], bytes]:
    """``transact``, tried again while the service is gone, up to ``patience.total_s`` of waiting."""

    def call(request: bytes) -> bytes:
        waited, delay = 0.0, patience.first_s
        while True:
            try:
                return transact(request)
            except ShmError as exc:
                if not exc.partner_gone or waited >= patience.total_s:
                    raise
            if waited == 0.0 and log is not None:
                log("crypto service gone (restarting?): trying again")
            delay = min(delay, patience.total_s - waited)
            sleep(delay)
            waited += delay
            delay = min(delay * 2, patience.max_s)

    return call
