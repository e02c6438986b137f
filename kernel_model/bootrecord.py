"""The boot record: what a new task reads first (its initial stack, in L4Re terms). Pure.

Moe builds the task's part (program, name, args, named caps -> selectors,
config) and hands it to the kernel with ``Thread::ex_regs``; the kernel
validates it (``BootRecord.from_task``: a malformed record is ``-L4_EINVAL``,
never an exception) and adds its own part (``root``, ``generation``); the
kernel host adds the host's part (work directory, network endpoints, the
confinement policy, the fault page) and sends it as the task's ``Boot`` frame
(``kernel_model.wire``); the task's bootstrap reads it through attributes.

One codec: ``encode`` writes JSON, ``decode`` reads everything the kernel
side wrote, ``from_task`` reads only the keys a task may set (everything
else, such as ``confine`` or ``network``, is the kernel's decision and is
ignored when a task sends it).

``ConfinementPolicy`` is the OS confinement the host decides and the task's
runtime applies (``tasks.runtime.confine.apply``); network authority is
carried once, as the record's ``network`` endpoints: a task with endpoints
keeps the host's network namespace, every other task gets its own.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

FAULT_MAGIC = 0x5359_5331  #: "SYS1": the fault page holds (magic, syscall number, arch) as 3 little-endian u32
DEFAULT_REQUIRED = frozenset({"env", "fds", "pdeathsig", "dumpable", "no_new_privs", "seccomp"})  # no root needed


class BootRecordError(ValueError):
    """The record is malformed; the message says what is wrong."""


@dataclasses.dataclass(frozen=True)
class ConfinementPolicy:
    """Which OS confinement one task process gets (docs/confinement.md)."""

    allow_fds: tuple[int, ...] = ()          # fds to keep: the channel (memfds arrive later over it)
    uid: int | None = None                   # per-task uid to switch to (root only)
    gid: int | None = None                   # defaults to uid
    writable_dir: str | None = None          # the one writable place; None = read-only fs
    workdir_image: str | None = None         # an ext4 image loop-mounted over writable_dir (its budget)
    workdir_passthrough: tuple[str, ...] = ()  # host directories in writable_dir kept over the image
                                             # (device channels the host serves: a TPM relay, a token)
    hidden_paths: tuple[str, ...] = ()       # directories covered by an empty tmpfs
    expose_paths: tuple[str, ...] = ()       # kept reachable for `uid` (interpreter paths are added)
    network: bool = False                    # False: own network namespace, loopback down (in a boot
                                             # record: whether the record has network endpoints)
    ipc_namespace: bool = True               # own SysV IPC / POSIX mqueue (and UTS) namespace
    mount_namespace: bool = True             # read-only view except writable_dir, minimal /dev
    hide_proc: bool = True                   # /proc shows only this task (hidepid) or nothing
    user_namespace: bool = True              # not root: an unprivileged userns holds the namespaces
    keep_stdio: bool = False                 # False: fds 0-2 not in allow_fds become /dev/null
    clean_env: bool = True
    keep_env: tuple[str, ...] = ()
    parent_pid: int | None = None            # expected parent (the kernel); None = parent at apply()
    rlimit_as: int | None = 2 << 30
    rlimit_nofile: int | None = 256
    rlimit_nproc: int | None = 64            # only with a per-task uid (it counts per uid)
    rlimit_cpu: int | None = None
    rlimit_core: int | None = 0
    rlimit_fsize: int | None = 64 << 20
    seccomp: bool = True
    seccomp_allow_list: bool = True          # False: the old deny-list (default allow)
    pid_namespace: bool = True               # own pid namespace: the task is pid 1 and sees no other pid
    fault_fd: int | None = None              # a kernel-provided page: the SIGSYS reporter writes the syscall there
    allow_fork: bool = False
    allow_exec: bool = False
    strict: bool = False                     # every step the policy asks for is required
    required: frozenset[str] = DEFAULT_REQUIRED

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (tuples as lists, ``required`` sorted)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: object) -> ConfinementPolicy:
        """The policy ``to_dict`` wrote; ``BootRecordError`` names an unknown or mistyped setting."""
        if not isinstance(data, dict):
            raise BootRecordError("the confinement policy is not a JSON object")
        unknown = set(data) - set(_POLICY_TYPES)
        if unknown:
            raise BootRecordError(f"unknown confinement settings: {sorted(unknown)}")
        kw: dict[str, Any] = {}
        for key, value in data.items():
            kw[key] = _typed(value, _POLICY_TYPES[key], f"confinement setting {key}")
        return cls(**kw)


_POLICY_TYPES: dict[str, str] = {f.name: str(f.type) for f in dataclasses.fields(ConfinementPolicy)}


@dataclasses.dataclass(frozen=True)
class BootModule:
    """A boot module mapped into a root task (read-only): ``mapped`` bytes at ``address``, ``size`` used."""

    name: str
    address: int
    size: int
    mapped: int


@dataclasses.dataclass(frozen=True)
class RamRegion:
    """The physical RAM Sigma0 owns."""

    base: int
    size: int


@dataclasses.dataclass(frozen=True)
class BootRecord:
    """A task's boot record. ``program`` is ``tasks.<program>`` (root tasks: a full module name)."""

    program: str
    name: str = ""
    args: tuple[str, ...] = ()
    caps: dict[str, int] = dataclasses.field(default_factory=dict)  #: capability name -> selector
    first_free: int = 64  #: first capability slot the task's allocator hands out
    config: dict[str, Any] = dataclasses.field(default_factory=dict)  #: the image's ``config`` for the task
    # the kernel's part
    root: bool = False  #: Sigma0 and Moe: started by the kernel itself
    generation: int = 0  #: incarnation of the task called ``name`` (1 for the first start)
    modules: tuple[BootModule, ...] = ()  #: root tasks: boot modules, their memory passed in this order
    ram: RamRegion | None = None  #: Sigma0: the RAM it owns
    # the kernel host's part
    workdir: str | None = None  #: the task's one writable directory
    network: tuple[str, ...] = ()  #: host endpoints this (driver) task may connect to; () = no network
    confine: ConfinementPolicy | None = None  #: None: the task runs unconfined
    report_confinement: bool = False  #: say what confinement is enforced (the first task does)
    fault_page: bool = False  #: the last boot fd is the kernel's fault page (``FAULT_MAGIC``)

    def encode(self) -> bytes:
        """The record as compact JSON, fields at their default left out (what ``decode`` reads back)."""
        doc: dict[str, Any] = {}
        default = _DEFAULTS
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "program" and value == default.get(f.name):
                continue  # left out: decode gives the default
            if f.name == "confine":
                value = None if value is None else {k: v for k, v in value.to_dict().items() if k != "network"}
            elif f.name == "modules":
                value = [dataclasses.asdict(m) for m in value]
            elif f.name == "ram":
                value = None if value is None else dataclasses.asdict(value)
            else:
                value = _plain(value)
            doc[f.name] = value
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> BootRecord:
        """Everything ``encode`` wrote; ``BootRecordError`` if it is malformed."""
        doc = _json_object(data)
        base = cls.from_task(data)
        confine = doc.get("confine")
        network = _typed(doc.get("network", []), "tuple[str, ...]", "network")
        policy = None
        if confine is not None:
            policy = dataclasses.replace(ConfinementPolicy.from_dict(confine), network=bool(network))
        ram = doc.get("ram")
        return dataclasses.replace(
            base,
            root=_typed(doc.get("root", False), "bool", "root"),
            generation=_typed(doc.get("generation", 0), "int", "generation"),
            modules=tuple(_module(m) for m in _typed(doc.get("modules", []), "list", "modules")),
            ram=None if ram is None else RamRegion(_typed(_field(ram, "base"), "int", "ram.base"),
                                                   _typed(_field(ram, "size"), "int", "ram.size")),
            workdir=_typed(doc.get("workdir"), "str | None", "workdir"),
            network=network,
            confine=policy,
            report_confinement=_typed(doc.get("report_confinement", False), "bool", "report_confinement"),
            fault_page=_typed(doc.get("fault_page", False), "bool", "fault_page"),
        )

    @classmethod
    def from_task(cls, data: bytes) -> BootRecord:
        """The part of a record a task may set (what Moe hands the kernel); other keys are ignored.

        The host uses the name for the work directory and the program as a module name, so both are
        checked here.
        """
        doc = _json_object(data)
        program, name = doc.get("program"), doc.get("name")
        if not isinstance(program, str) or not _PROGRAM.fullmatch(program) or len(program) > 128:
            raise BootRecordError("the boot record's program is not a module name")
        if name is not None and (not isinstance(name, str) or not _NAME.fullmatch(name)):
            raise BootRecordError("the boot record's name is not [A-Za-z0-9_.-], at most 64 characters")
        args, caps, config = doc.get("args", []), doc.get("caps", {}), doc.get("config", {})
        if not isinstance(args, list) or not isinstance(caps, dict):
            raise BootRecordError("the boot record's args must be a list and caps an object")
        if not all(isinstance(a, str) for a in args):
            raise BootRecordError("the boot record's args must be strings")
        if not all(_is_int(v) for v in caps.values()):
            raise BootRecordError("the boot record's caps must map names to selectors")
        if not isinstance(config, dict):
            raise BootRecordError("the boot record's config must be an object")
        first_free = doc.get("first_free", 64)
        if not _is_int(first_free) or first_free < 0:
            raise BootRecordError("the boot record's first_free must be a slot number")
        return cls(program=program, name=name or "", args=tuple(args), caps=dict(caps),
                   first_free=first_free, config=config)


_DEFAULTS: dict[str, Any] = {f.name: f.default if f.default is not dataclasses.MISSING else
                             f.default_factory() if f.default_factory is not dataclasses.MISSING else None
                             for f in dataclasses.fields(BootRecord)}
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_PROGRAM = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BootRecordError("the boot record is not JSON") from None
    if not isinstance(doc, dict):
        raise BootRecordError("the boot record is not a JSON object")
    return doc


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _field(doc: object, key: str) -> object:
    if not isinstance(doc, dict) or key not in doc:
        raise BootRecordError(f"the boot record lacks {key}")
    return doc[key]


def _module(doc: object) -> BootModule:
    return BootModule(_typed(_field(doc, "name"), "str", "module name"),
                      *(_typed(_field(doc, k), "int", f"module {k}") for k in ("address", "size", "mapped")))


def _plain(value: Any) -> Any:
    if isinstance(value, frozenset):
        return sorted(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def _typed(value: Any, kind: str, what: str) -> Any:
    """``value`` as the annotated ``kind`` (JSON lists become tuples / frozensets), or ``BootRecordError``."""
    optional = kind.endswith(" | None")
    base = kind.removesuffix(" | None")
    if value is None and optional:
        return None
    if base == "bool" and isinstance(value, bool):
        return value
    if base == "int" and _is_int(value):
        return value
    if base == "str" and isinstance(value, str):
        return value
    if base == "list" and isinstance(value, list):
        return value
    if base in ("tuple[int, ...]", "tuple[str, ...]", "frozenset[str]") and isinstance(value, list):
        item = int if "int" in base else str
        if all(isinstance(v, item) and not isinstance(v, bool) for v in value):
            return frozenset(value) if base.startswith("frozenset") else tuple(value)
    raise BootRecordError(f"the boot record's {what} is not {kind}")
