"""First code in every task process: read the boot record, confine, run the program.

Started by the kernel host as ``python -I -m tasks.runtime.bootstrap`` with the
channel on fd 3, stderr a write-only pipe to the kernel console, and nothing
else. The program is ``tasks.<program>`` (``kernel_model.<x>`` only for the
root tasks Sigma0 and Moe, which the kernel itself starts).
"""
from __future__ import annotations

import importlib
import os
import sys
import traceback

CHANNEL_FD = 3


def run() -> int:
    # Nothing but stdio and the channel may survive from whoever started the kernel
    # (a shell's stray inheritable fds would otherwise leak into every task).
    os.closerange(CHANNEL_FD + 1, os.sysconf("SC_OPEN_MAX"))
    from tasks.runtime.channel import ChannelClosed, KernelChannel

    channel = KernelChannel.inherited()
    try:
        boot, boot_fds = channel.boot()
    except ChannelClosed:
        return 111
    record = boot.record
    confine = record.get("confine")
    if confine:
        from tasks.runtime import confine as confinement
        try:
            report = confinement.apply(confinement.policy_from_record(confine, boot_fds))
        except confinement.ConfinementError as exc:
            print("confinement failed, not starting:\n" + exc.report.summary(), file=sys.stderr, flush=True)
            return 113
        weak = [s for s in report.steps if s.status in (confinement.UNAVAILABLE, confinement.FAILED)]
        if confine.get("report"):
            done = [s.name for s in report.steps if s.status == confinement.ENFORCED]
            print(f"confinement: enforced {', '.join(done)} ({report.elapsed_s * 1000:.0f} ms)",
                  file=sys.stderr, flush=True)
        for step in weak:
            print(f"confinement: NOT enforced {step.name}: {step.detail}", file=sys.stderr, flush=True)
    from tasks.runtime.env import Env

    if record.get("workdir"):
        os.chdir(record["workdir"])  # the task's one writable place (its files live here)

    program = str(record.get("program", ""))
    module_name = program if record.get("root") else f"tasks.{program}"
    env = Env(channel, record, boot_fds)
    try:
        module = importlib.import_module(module_name)
        code = module.main(env)
    except ChannelClosed:
        return 112
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - the task's own crash; report it, exit non-zero
        traceback.print_exc()
        return 1
    return int(code or 0)


if __name__ == "__main__":
    code = run()
    sys.stdout.flush()
    sys.stderr.flush()
    # Exit without interpreter teardown: the channel closes as the process ends,
    # so the kernel sees the exit status, not a half-torn-down task.
    os._exit(code if 0 <= code < 256 else 1)
