"""A task that misbehaves on command, so tests control the attacker.

Each argument is one command, ``verb:arg,arg``; each command logs one line
``RESULT {json}`` with what the kernel answered. Caps are named as in the
image or given as selectors (``0x50000``). Nothing here is trusted: it only
has the capabilities its image gives it.

Verbs:
  call:CAP[,PROTO[,WORD...]]   call with zero send timeout and 1 s receive timeout
  send:CAP[,PROTO[,WORD...]]   send with zero timeout (with words: until the partner takes it)
  sweep:FIRST,LAST             call every slot FIRST..LAST (protocol 0x100) -> which exist
  trigger:CAP                  trigger an IRQ
  bind_irq:CAP / bind_gate:CAP,LABEL
  map:CAP[,w]                  map a dataspace (w = ask for write access)
  mapoff:CAP,OFFSET            map one page of a dataspace at OFFSET (past its end)
  write:CAP                    map read-only, then store into it with ctypes, under the runtime's feet
  mmap_rw:CAP                  map read-only, then try mmap(PROT_WRITE) on the fd the kernel passed
  alloc:SIZE                   allocate a dataspace from Moe (memory quota)
  fds                          report open fds, environment and argv
  recvmem:CAP                  call a server that maps memory back; keep our own reference to it
  ignore_revoke                ignore the kernel's unmap notices from now on
  peek / poke:TEXT             read / write that memory through our own reference
  callblob:CAP                 call and report the reply's data
  await:IRQ                    bind IRQ and wait until it fires (the test's "go")
  net:HOST:PORT                connect a TCP socket ourselves
  kill_parent / read_mem:parent|PID / write_file:PATH   host-level escapes
  read_file:PATH / listdir:PATH                          read host files (sha256 of what was read)
  ids                          uid, gid, pid, parent pid as the task sees them
  fill:BYTES / files:N         write BYTES into one file / create N files in the work dir (its budget)
  syscall:NR[,ARG...]          a raw system call (outside the allow-list: the task is stopped)
  signal:PID                   kill(PID, 0): can the task address that pid at all?
  raw:CAP,PROTO[,WORD...]      any invocation, with a receive slot for a cap
  say:TEXT                     log TEXT with Python escapes decoded ('/' = newline): console spoofing
  flood:N / sleep:MS           log N lines in one burst / sleep MS milliseconds in the kernel
  twice                        write a second frame while the first blocks (the kernel faults the task)
  overmap:CAP[,N]              map the dataspace N times (default 2) into one fixed receive window
  truncate:CAP[,SIZE]          map writable and ftruncate the memfd the kernel passed (default: to 0);
                               CAP "alloc" = a fresh 8 KiB dataspace from Moe (kept as "allocated")
  clear:CAP                    ask the dataspace's server (Moe) to zero it
  reply                        reply although nobody called
  exit:CODE / crash            leave
"""
from __future__ import annotations

import ctypes
import json
import mmap
import os
import sys

from kernel_model.abi import INVALID_CAP, DataspaceOp, IpcError, IpcFlags, MsgTag, Proto, timeouts
from kernel_model.wire import Invocation
from tasks.runtime.env import pack

STATE: dict = {}
#: A guard against a hang, not an expectation of speed: an answer that comes (from the kernel or a
#: server on a loaded machine) must be the answer recorded, never a timeout.
GUARD_US = 30_000_000


def _sel(env, text: str) -> int:
    return int(text, 0) if text.startswith("0x") or text.isdigit() else env.cap(text)


def _msg(msg) -> dict:
    return {"error": msg.error.name, "status": msg.status, "label": msg.label}


def run(env, verb: str, args: list[str]) -> dict:
    if verb == "call":
        words = [int(a, 0) for a in args[2:]]
        proto = int(args[1], 0) if len(args) > 1 else 0x100
        return _msg(env.ipc_call(_sel(env, args[0]), proto, *words))
    if verb == "send":
        proto = int(args[1], 0) if len(args) > 1 else 0x100
        words = [int(a, 0) for a in args[2:]] or [0]
        return _msg(env.send(_sel(env, args[0]), proto, *words, timeout_us=0 if len(args) < 3 else None))
    if verb == "sweep":
        found = []
        for slot in range(int(args[0], 0), int(args[1], 0) + 1):
            msg = env.call(slot << 12, 0x100, 0, timeout_us=0)
            if msg.error is not IpcError.ENOT_EXISTENT:
                found.append(slot << 12)
        return {"found": found}
    if verb == "trigger":
        return _msg(env.trigger(_sel(env, args[0])))
    if verb == "bind_irq":
        return {"status": env.bind_irq(_sel(env, args[0]), 0x40)}
    if verb == "bind_gate":
        return {"status": env.bind_gate(_sel(env, args[0]), int(args[1], 0))}
    if verb == "map":
        writable = len(args) > 1 and args[1] == "w"
        try:
            region = env.map_dataspace(_sel(env, args[0]), writable=writable)
        except Exception as exc:
            return {"mapped": False, "error": str(exc)}
        return {"mapped": True, "writable": region.writable, "first": region.read(0, 16).hex()}
    if verb == "mapoff":  # map a dataspace at an offset past its end
        msg = env.call(_sel(env, args[0]), Proto.DATASPACE, DataspaceOp.MAP, int(args[1], 0), 4096, 0,
                       rcv_mem=4096, timeout_us=GUARD_US)
        return {**_msg(msg), "mapped": bool(msg.regions)}
    if verb == "write":
        region = env.map_dataspace(_sel(env, args[0]))
        # CPython's mmap object starts with PyObject_HEAD, then ``char *data``: the mapping's address.
        addr = ctypes.c_void_p.from_address(id(region.map) + object.__basicsize__).value
        env.log("RESULT " + json.dumps({"command": command_text(verb, args), "about_to_write": addr is not None}))
        # a read-only mapping: the OS faults this store (SIGSEGV); None would be NULL, faulting too
        ctypes.memset(addr, 0x41, 16)  # type: ignore[arg-type]
        return {"wrote": True}
    if verb == "mmap_rw":
        return _mmap_rw(env, _sel(env, args[0]))
    if verb == "alloc":
        msg = env.call(0x9000, -15, 0x4000, int(args[0], 0), rcv_cap=env.alloc_slot())
        return _msg(msg)
    if verb == "recvmem":  # ask a server to map memory to us
        msg = env.call(_sel(env, args[0]), 0x100, 1, rcv_mem=4096, timeout_us=GUARD_US)
        if msg.regions:
            STATE["region"] = msg.regions[0]
            STATE["raw"] = msg.regions[0].map  # our own reference: what a task that ignores unmap keeps
        return {**_msg(msg), "mapped": bool(msg.regions),
                "first": msg.regions[0].read(0, 8).decode(errors="replace") if msg.regions else ""}
    if verb == "ignore_revoke":  # our code ignores the kernel's unmap notices
        env.channel.on_revoke = None
        return {"ignoring": True}
    if verb == "peek":
        return {"data": STATE["raw"][0:8].decode(errors="replace")}
    if verb == "poke":
        STATE["raw"][0:len(args[0])] = args[0].encode()
        return {"poked": args[0]}
    if verb == "callblob":
        msg = env.call(_sel(env, args[0]), 0x100, 3, timeout_us=GUARD_US)
        return {**_msg(msg), "blob": msg.data.rstrip(b"\0").decode(errors="replace")}
    if verb == "await":  # bind an IRQ and wait for it: the test says "go"
        env.bind_irq(_sel(env, args[0]), 0x50)
        return _msg(env.receive(_sel(env, args[0])))
    if verb == "net":  # open a connection ourselves, bypassing every capability
        import socket
        host, _, port = args[0].rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return {"connected": True}
        except OSError as exc:
            return {"connected": False, "errno": exc.errno, "error": type(exc).__name__}
    if verb == "kill_parent":
        import signal
        try:
            os.kill(os.getppid(), signal.SIGTERM)
            return {"killed": True}
        except OSError as exc:
            return {"killed": False, "errno": exc.errno}
    if verb == "read_mem":  # another process's memory: the kernel's (parent) or a pid
        pid = os.getppid() if args[0] == "parent" else int(args[0])
        try:
            with open(f"/proc/{pid}/mem", "rb") as f:
                f.read(16)
            return {"read": True}
        except OSError as exc:
            return {"read": False, "errno": exc.errno}
    if verb == "read_file":
        import hashlib
        try:
            with open(args[0], "rb") as f:
                data = f.read()
            return {"read": True, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        except OSError as exc:
            return {"read": False, "errno": exc.errno}
    if verb == "listdir":
        try:
            return {"entries": sorted(os.listdir(args[0]))}
        except OSError as exc:
            return {"entries": None, "errno": exc.errno}
    if verb == "syscall":
        libc = ctypes.CDLL(None, use_errno=True)
        numbers = [int(a, 0) for a in args]
        env.log("RESULT " + json.dumps({"command": command_text(verb, args), "about_to_call": numbers[0]}))
        rc = libc.syscall(*[ctypes.c_long(n) for n in numbers])
        return {"rc": rc, "errno": ctypes.get_errno()}
    if verb == "signal":
        try:
            os.kill(int(args[0], 0), 0)
            return {"exists": True}
        except OSError as exc:
            return {"exists": False, "errno": exc.errno}
    if verb == "fill":
        written, chunk = 0, bytes(1 << 16)
        try:
            with open("fill.bin", "wb") as f:
                while written < int(args[0], 0):
                    written += f.write(chunk)
                    f.flush()
                os.fsync(f.fileno())
            return {"written": written}
        except OSError as exc:
            return {"written": written, "errno": exc.errno}
    if verb == "files":
        made = 0
        try:
            for made in range(int(args[0], 0)):
                open(f"f{made}", "w").close()
            return {"made": made + 1}
        except OSError as exc:
            return {"made": made, "errno": exc.errno}
    if verb == "ids":
        return {"uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid(), "ppid": os.getppid()}
    if verb == "write_file":
        try:
            with open(args[0], "w") as f:
                f.write("x")
            return {"written": True}
        except OSError as exc:
            return {"written": False, "errno": exc.errno}
    if verb == "raw":  # an arbitrary invocation: dest, protocol, words (a kernel-object attack)
        words = [int(a, 0) for a in args[2:]]
        msg = env.call(_sel(env, args[0]), int(args[1], 0), *words, timeout_us=GUARD_US,
                       rcv_cap=env.alloc_slot())
        return {**_msg(msg), "got_cap": bool(msg.items)}
    if verb in ("crypto_import", "crypto_destroy"):  # through the gateway's crypto capability
        from protocols import crypto as cp
        from tasks.runtime.shm import ShmClient
        client = STATE.setdefault("crypto", ShmClient(env, env.cap("crypto"), env.cap("crypto_shm"),
                                                      timeout_us=GUARD_US))
        if verb == "crypto_import":
            frame = cp.KeyImportRequest(0, cp.KeyType.AES_256, cp.Usage(0), cp.KeyFormat.SECRET, bytes(32)).encode()
        else:
            frame = cp.KeyDestroyRequest(1).encode()
        response = client.transact(frame)
        return {"status": response[2]}
    if verb == "overmap":
        return _overmap(env, _sel(env, args[0]), int(args[1], 0) if len(args) > 1 else 2)
    if verb == "truncate":
        if args[0] == "alloc":
            STATE["allocated"] = env.alloc_dataspace(8192)
        ds = STATE["allocated"] if args[0] == "alloc" else _sel(env, args[0])
        return _truncate(env, ds, int(args[1], 0) if len(args) > 1 else 0)
    if verb == "clear":
        ds = STATE["allocated"] if args[0] == "allocated" else _sel(env, args[0])
        return _msg(env.ipc_call(ds, Proto.DATASPACE, DataspaceOp.CLEAR))
    if verb == "fds":
        fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
        targets = {}
        for fd in fds:
            try:
                targets[fd] = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                pass
        with open("/proc/self/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")[:-1]
        return {"fds": fds, "targets": targets, "env": dict(os.environ), "argv": [a.decode() for a in cmdline]}
    if verb == "say":  # log raw text: Python escapes (\r, \x1b, \u202e) decoded, '/' for a line break
        text = args[0].encode("latin-1", "backslashreplace").decode("unicode_escape").replace("/", "\n")
        env.log.write(text)
        return {"said": len(text)}
    if verb == "flood":  # log N lines in one burst: as few writes as the log takes (~48 lines each), so the
        # kernel sees them within one rate window on any machine, however slow (an emulated board too)
        env.log.write("".join(f"flood {i}\n" for i in range(int(args[0], 0))))
        return {"flooded": int(args[0], 0)}
    if verb == "sleep":  # a receive timeout in the kernel (env.sleep), in ms
        env.sleep(int(args[0], 0) * 1000)
        return {"slept": int(args[0], 0)}
    if verb == "twice":  # a second frame while the first blocks in the kernel: breaks the protocol
        sleep = Invocation(IpcFlags.RECV, INVALID_CAP, MsgTag(0), timeout=timeouts(None, 1_000_000))
        env.channel.sock.send(sleep.encode())
        env.channel.sock.send(sleep.encode())
        return _msg(env.sleep(2_000_000) or env.ipc(IpcFlags.RECV, INVALID_CAP, recv_timeout_us=1))
    if verb == "reply":
        return _msg(env.reply(0))
    if verb == "exit":
        sys.stdout.flush()
        os._exit(int(args[0]))
    if verb == "crash":
        ctypes.string_at(0)
    return {"unknown": verb}


def command_text(verb: str, args: list[str]) -> str:
    return f"{verb}:{','.join(args)}" if args else verb


def _mmap_rw(env, ds: int) -> dict:
    """Bypass the runtime: take the fd the kernel passes with the mapping and ask for PROT_WRITE."""
    size = env.dataspace_size(ds)
    size = -(-size // 4096) * 4096
    base = env.memory.reserve(size)
    inv = Invocation(IpcFlags.CALL, ds, MsgTag(Proto.DATASPACE, 4), pack(DataspaceOp.MAP, 0, size, 0),
                     (), timeouts(None, None), 0, INVALID_CAP, base, size)
    result, fds = env.channel.ipc(inv)
    if not fds:
        return {"error": result.error.name, "status": result.tag.label, "fds": 0}
    fd = fds[0]
    try:
        mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        return {"writable_mmap": True}
    except PermissionError as exc:
        return {"writable_mmap": False, "errno": exc.errno}
    finally:
        os.close(fd)


def _map_raw(env, ds: int, base: int, size: int, writable: bool):
    inv = Invocation(IpcFlags.CALL, ds, MsgTag(Proto.DATASPACE, 4), pack(DataspaceOp.MAP, 0, size, int(writable)),
                     (), timeouts(1_000_000, 1_000_000), 0, INVALID_CAP, base, size)
    return env.channel.ipc(inv)


def _overmap(env, ds: int, times: int) -> dict:
    """The same dataspace mapped again and again at one receive window (a legal overmap)."""
    size = -(-env.dataspace_size(ds) // 4096) * 4096
    base = env.memory.reserve(size)
    errors, maps = [], []
    for i in range(times):
        result, fds = _map_raw(env, ds, base, size, True)
        errors.append(result.error.name)
        for fd in fds:
            maps.append(mmap.mmap(fd, size, flags=mmap.MAP_SHARED))
            os.close(fd)
        if maps:
            maps[-1][0:8] = f"round{i:03d}".encode()[:8]
    return {"errors": errors, "fds": len(maps), "last": maps[-1][0:8].decode() if maps else ""}


def _truncate(env, ds: int, new_size: int) -> dict:
    """Resize the backing of a shared dataspace under everybody else's feet."""
    size = -(-env.dataspace_size(ds) // 4096) * 4096
    result, fds = _map_raw(env, ds, env.memory.reserve(size), size, True)
    if not fds:
        return {"error": result.error.name, "fds": 0}
    try:
        os.ftruncate(fds[0], new_size)
        return {"truncated": True}
    except OSError as exc:
        return {"truncated": False, "errno": exc.errno}
    finally:
        os.close(fds[0])


def main(env) -> int:
    env.ipc_call = lambda dest, proto, *words: env.call(dest, proto, *words, timeout_us=GUARD_US)
    for command in env.args:
        verb, _, rest = command.partition(":")
        args = [a for a in rest.split(",") if a]
        try:
            result = run(env, verb, args)
        except Exception as exc:
            result = {"exception": type(exc).__name__, "message": str(exc)}
        env.log("RESULT " + json.dumps({"command": command, **result}))
    return 0
