"""Which OS confinement each task process gets (the policy; tasks/runtime/confine.py applies it)."""
from __future__ import annotations

from kernel_model.objects import Task


def policy_for(task: Task, index: int) -> dict | None:
    return None
