"""Malloc trimming is off in task processes (``tasks.runtime.bootstrap.tune_malloc``): buffers of a
64 KiB request, allocated and freed again and again, stop faulting their pages in each time."""
from __future__ import annotations

import subprocess
import sys

import pytest

CHURN = """
import resource, sys
from tasks.runtime import bootstrap
if sys.argv[1] == "tuned":
    bootstrap.tune_malloc()
def churn():  # a chunked request's transient buffers: sixteen 64 KiB blocks (1 MiB), then all freed
    blocks = [bytearray(64 * 1024) for _ in range(16)]
    del blocks
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_freed_request_buffers_are_not_given_back_and_faulted_in_again():
    default, tuned = (int(subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True,
                                         check=True).stdout) for mode in ("default", "tuned"))
    if default < 200:
        pytest.skip(f"this libc does not trim here ({default} faults for 200 requests)")
    assert tuned < default / 10, f"tuned malloc still faults its request buffers in again ({tuned} vs {default})"
