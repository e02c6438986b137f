"""The gateway's calls ride out a crypto-service restart (tasks/oem_gateway/patience.py)."""
from __future__ import annotations

import pytest

from kernel_model.abi import IpcError
from tasks.oem_gateway.patience import Patience, patient
from tasks.runtime.shm import ShmError


def scripted(*outcomes):
    calls = []

    def transact(request):
        calls.append(request)
        outcome = outcomes[len(calls) - 1]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return transact, calls


def test_a_call_that_finds_the_service_gone_is_tried_again_with_growing_waits():
    gone = ShmError("shared-memory call", IpcError.ENOT_EXISTENT)
    transact, calls = scripted(gone, gone, gone, b"answer")
    waits, said = [], []
    call = patient(transact, waits.append, Patience(first_s=0.1, max_s=0.3, total_s=10), log=said.append)
    assert call(b"req") == b"answer"
    assert calls == [b"req"] * 4 and waits == [0.1, 0.2, 0.3] and len(said) == 1


def test_it_gives_up_after_its_total_wait_with_the_original_error():
    gone = ShmError("shared-memory call", IpcError.ENOT_EXISTENT)
    transact, calls = scripted(*[gone] * 100)
    waits = []
    with pytest.raises(ShmError) as err:
        patient(transact, waits.append, Patience(first_s=1, max_s=4, total_s=10))(b"req")
    assert err.value.error == IpcError.ENOT_EXISTENT
    assert waits == [1, 2, 4, 3] and sum(waits) == 10 and len(calls) == 5  # never waits past the total


@pytest.mark.parametrize("error", [IpcError.RETIMEOUT, IpcError.SECANCELED, -1])
def test_any_other_error_is_reported_at_once(error):
    transact, calls = scripted(ShmError("shared-memory call", error))
    waits = []
    with pytest.raises(ShmError):
        patient(transact, waits.append)(b"req")
    assert len(calls) == 1 and waits == []
