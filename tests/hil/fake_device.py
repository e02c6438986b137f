"""A stand-in for the device end of a serial line: a shell on its own pty, relayed to a console.

    python fake_device.py qemu BODY QEMU-ARGV...   # like QEMU: connect to the argv's -chardev socket path
    python fake_device.py pty BODY                 # like a board on a serial cable: prints the host end's
                                                   # path (a pty slave, opened by the harness as a tty device)

``BODY`` is the device's "firmware": a shell script run with ``sh -c`` on a pty (so ^C from the
console becomes SIGINT there, as on a real tty). The relay copies bytes both ways until the
body exits, then closes the console, as a powered-off board or an exited QEMU does.
"""
from __future__ import annotations

import os
import pty
import re
import select
import signal
import socket
import sys
import tty


def relay(console_fd: int, body: str) -> int:
    pid, master = pty.fork()
    if pid == 0:
        # A device's shell starts with default signal dispositions, whatever started the harness:
        # a test run started in the background (`make test &`, nohup) ignores SIGINT, and ignored
        # signals survive exec, so ^C from the console would never stop a command.
        for sig in (signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        os.execv("/bin/sh", ["sh", "-c", body])
    while True:
        try:
            ready, _, _ = select.select([console_fd, master], [], [])
        except InterruptedError:
            continue
        if console_fd in ready:
            try:
                data = os.read(console_fd, 4096)
            except OSError:
                data = b""
            if not data:
                break
            os.write(master, data)
        if master in ready:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the body exited
                data = b""
            if not data:
                break
            os.write(console_fd, data)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def main(argv: list[str]) -> int:
    mode, body, *rest = argv
    if mode == "qemu":
        chardev = rest[rest.index("-chardev") + 1]
        path = re.search(r"path=([^,]+)", chardev).group(1)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        code = relay(sock.fileno(), body)
        sock.close()
        return max(code, 0)
    if mode == "pty":
        host_end_master, host_end = os.openpty()
        tty.setraw(host_end_master)
        print(os.ttyname(host_end), flush=True)
        code = relay(host_end_master, body)
        os.close(host_end)
        return max(code, 0)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
