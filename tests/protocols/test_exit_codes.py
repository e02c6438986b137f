"""One exit-status table for every l4emu process, and one catch-all per command line."""
from __future__ import annotations

from protocols.exit_codes import ExitCode, killed_by


def test_every_status_means_one_thing():
    values = [code.value for code in ExitCode]
    assert len(values) == len(set(values))  # no two names share a status (IntEnum would alias them silently)
    assert all(0 <= v <= 255 for v in values)
    assert ExitCode.INTERRUPTED == killed_by(2) == 130 and killed_by(31) == ExitCode.SYSCALL_FAULT


def test_the_commands_use_the_table():
    from hil.qemu import cli as hil_cli
    from hil.qemu.errors import BootFailed, GuestUnresponsive, HarnessError
    from kernel_model.host import supervisor

    assert {e.value for e in hil_cli.Exit} <= {c.value for c in ExitCode}
    assert (BootFailed.exit_code, HarnessError.exit_code, GuestUnresponsive.exit_code) == (
        ExitCode.QEMU_DID_NOT_BOOT, ExitCode.HARNESS, ExitCode.GUEST_UNRESPONSIVE)
    assert (supervisor.EXIT_SIGMA0_DIED, supervisor.EXIT_SYSCALL_FAULT) == (ExitCode.HALTED, ExitCode.SYSCALL_FAULT)


def _boom(*_args, **_kwargs):
    raise RuntimeError("a bug")


def test_l4emu_turns_a_bug_into_its_status_and_says_so(monkeypatch, capsys):
    import l4emu.check
    from l4emu import cli

    monkeypatch.setattr(l4emu.check, "check_image", _boom)
    assert cli.main(["check", "images/hello.yaml"]) == ExitCode.BUG
    err = capsys.readouterr().err
    assert "RuntimeError: a bug" in err and "unexpected failure in l4emu" in err


def test_est_ca_turns_a_bug_into_its_status(monkeypatch, capsys, tmp_path):
    from hil.est_ca import cli

    monkeypatch.setattr(cli, "EstCa", _boom)
    assert cli.main(["ca-cert", "--state-dir", str(tmp_path)]) == ExitCode.BUG
    assert "unexpected failure in l4emu est-ca" in capsys.readouterr().err


def test_hil_turns_a_bug_into_its_status(monkeypatch, capsys):
    import hil.qemu.build
    from hil.qemu import cli

    monkeypatch.setattr(hil.qemu.build, "write_lock", _boom)
    assert cli.main(["lock"]) == ExitCode.BUG
    assert "harness-bug" in capsys.readouterr().err


def test_a_task_whose_kernel_hangs_up_before_the_boot_record_exits_with_its_status():
    import os
    import socket
    import subprocess
    import sys

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.close()  # the kernel is gone before it said anything
    fd = theirs.fileno()
    proc = subprocess.run([sys.executable, "-I", "-c",
                           f"import os, sys; os.dup2({fd}, 3); sys.path[:0] = {sys.path!r}; "
                           "from tasks.runtime.bootstrap import run; sys.exit(run())"],
                          pass_fds=(fd,), cwd=os.getcwd(), timeout=120)
    theirs.close()
    assert proc.returncode == ExitCode.TASK_NO_BOOT_RECORD
