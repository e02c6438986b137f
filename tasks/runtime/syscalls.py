"""The seccomp allow-list of a task process: the system calls a confined Python task needs, and no more.

How it was derived (docs/confinement.md, "Deriving the allow-list"): every shipped image and the
system tests were run under ``strace -f -ff`` and, per task process, every system call made
*after* its filter was loaded was collected (``python -m tasks.runtime.syscalls TRACE_FILE...``
prints that set). ``TRACED`` is the union; ``RUNTIME`` adds what CPython and glibc make on paths
the traces did not happen to take (threads, signals, time without vDSO, errors, aarch64's names
for the same calls), each group named. Everything else is not allowed: the task is stopped and
the kernel reports ``faulted: syscall N (name) not allowed``. ``DENIED`` calls (a known way out,
refused politely) fail with EPERM instead, so a library probing for them carries on.
"""
from __future__ import annotations

import re
import sys

#: seen in the traces of the shipped images (hello, wvds) and of the system and attack tests
TRACED = frozenset([
    "brk", "chdir", "chmod", "close", "connect", "exit_group", "fcntl", "fsync", "ftruncate", "futex", "getcwd",
    "getdents64", "getgid", "getpeername", "getpid", "getppid", "getrandom", "getsockname", "getsockopt", "getuid",
    "ioctl", "kill", "lseek", "mkdir", "mmap", "mprotect", "mremap", "munmap", "newfstatat", "openat", "poll",
    "prctl", "read", "readlink", "recvfrom", "recvmsg", "rename", "rmdir", "rt_sigaction", "sched_getaffinity",
    "sendto", "socket", "statx", "unlink", "unlinkat", "write",
])

#: what CPython/glibc need on paths the traces did not take, by group
RUNTIME = {
    "memory": "madvise mincore membarrier",
    "threads": "clone set_robust_list get_robust_list rseq set_tid_address gettid sched_yield exit sigaltstack",
    "signals": "rt_sigprocmask rt_sigreturn rt_sigpending rt_sigsuspend rt_sigtimedwait tgkill tkill restart_syscall",
    "time": "clock_gettime clock_getres clock_nanosleep gettimeofday time nanosleep times",
    "identity": "capget geteuid getegid getresuid getresgid getgroups getpgrp getpgid getsid getppid uname umask",
    "limits": "getrlimit prlimit64 sysinfo getpriority sched_getparam sched_getscheduler getrusage",
    "files": "open stat fstat lstat access faccessat faccessat2 pread64 pwrite64 readv writev preadv pwritev "
             "readlinkat mkdirat renameat renameat2 fdatasync fadvise64 fallocate truncate fchmod fchmodat "
             "statfs fstatfs dup dup2 dup3 pipe pipe2 flock utimensat link linkat symlink symlinkat getdents "
             "copy_file_range sendfile close_range",
    "waiting": "ppoll select pselect6 epoll_create epoll_create1 epoll_ctl epoll_wait epoll_pwait epoll_pwait2 "
               "eventfd eventfd2",
    "sockets": "sendmsg shutdown setsockopt",  # on the channel and, for network drivers, their own sockets
}

ALLOWED = TRACED | frozenset(" ".join(RUNTIME.values()).split())

#: a known way out: refused with EPERM (conditional rules in confine.py narrow kill/clone/prctl/...)
DENIED = [
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4", "ptrace", "process_vm_readv",
    "process_vm_writev", "process_madvise", "process_mrelease", "pidfd_open", "pidfd_getfd", "pidfd_send_signal",
    "kcmp", "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount",
    "fspick", "mount_setattr", "unshare", "setns", "keyctl", "add_key", "request_key", "bpf", "perf_event_open",
    "personality", "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot",
    "swapon", "swapoff", "acct", "syslog", "quotactl", "quotactl_fd", "name_to_handle_at", "open_by_handle_at",
    "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "fanotify_init", "lookup_dcookie",
    "uselib", "modify_ldt", "iopl", "ioperm", "vhangup", "settimeofday", "clock_settime", "clock_adjtime",
    "adjtimex", "sethostname", "setdomainname", "migrate_pages", "move_pages", "msgget", "semget", "shmget",
    "mq_open", "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid", "setfsgid",
    "setgroups", "capset",
]


def traced_after_filter(lines: list[str]) -> set[str]:
    """System call names in one ``strace -ff`` file after the process loaded its seccomp filter."""
    start = next((i for i, line in enumerate(lines)
                  if line.startswith("seccomp(SECCOMP_SET_MODE_FILTER") and "filter=" in line
                  and line.rstrip().endswith("= 0")), None)
    if start is None:
        return set()
    return {m.group(1) for line in lines[start + 1:] if (m := re.match(r"(\w+)\(", line))}


def main(argv: list[str]) -> int:
    seen: set[str] = set()
    for path in argv:
        with open(path, errors="replace") as f:
            seen |= traced_after_filter(f.read().splitlines())
    print(" ".join(sorted(seen)))
    missing = seen - ALLOWED
    if missing:
        print(f"not in the allow-list: {' '.join(sorted(missing))}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
