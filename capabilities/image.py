"""System images: the schema and a validator that names file, line and field.

An image is what ``modules.list`` plus a Ned script are in real L4Re: which
tasks boot, which kernel objects exist, and which named capabilities (with
which rights) each task starts with. Pure: ``parse_image(text, filename)``
takes the text; reading files is the caller's business.

Schema (every key not listed here is an error)::

    name: hello                  # required, [a-z0-9_-]+
    description: free text
    ram: 64MiB                   # RAM Sigma0 owns (default 64MiB)
    modules:                     # boot modules -> Moe's read-only `rom` namespace
      greeting: files/greeting.txt   # name: path relative to the image file
    run:
      until: [client]            # boot ends when these tasks have exited
    objects:                     # created by Moe before any task starts
      ping: {type: gate}
      done: {type: irq}
      shm:  {type: dataspace, size: 4KiB}
      fab:  {type: factory, quota: 8}
    tasks:
      server:
        program: hello.ping_server    # module tasks/hello/ping_server.py
        args: [--count, "3"]
        log: {tag: pingsrv, color: g}  # colour letter n r g y b m c w (upper = bright)
        memory: 1MiB                  # Moe quota for the task's own dataspaces
        restart: never                # never | on-failure | always, or the long form with backoff and
                                      # intensity (capabilities/restart.py, docs/supervision.md)
        restart_limit: 3              # with the short form: restart at once, at most this often (the old meaning)
        workdir: {size: 32MiB, files: 512}  # the task's work-dir budget (these are the defaults)
        config: {any: json}           # handed to the task in its boot record (env.config)
        network:                      # only for driver tasks: host endpoints it may connect to
          connect: ["127.0.0.1:8443"]
        caps:
          ping: ping:svr              # object:rights, or {object: ping, rights: svr}
          rom: rom:r                  # `rom` is Moe's namespace of the modules
        limits:                       # kernel budgets (optional; these are the defaults)
          caps: 1024                  # capability slots held at once; over it: -L4_ENOMEM / L4_IPC_REMAPFAILED
          mappings: 1024              # memory mappings (mapping-database entries); over it: L4_IPC_REMAPFAILED
          log_lines: 200              # log lines per second; the excess is dropped, then "N line(s) dropped"
          log_bytes: 65536            # log bytes per second (likewise)

Every task also gets ``log`` (its own log object), ``parent``, ``mem_alloc``
(Moe's allocator, charged to ``memory``), its ``task`` and ``thread`` caps;
these names are reserved.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import Any

import yaml

from capabilities.kinds import DECLARABLE, IMAGE_KINDS
from capabilities.restart import RestartPolicy, parse_duration
from capabilities.restart import parse as parse_restart
from capabilities.rights import CapRights

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,15}$")  # l4re_env_cap_entry_t names are <= 16 chars
PROGRAM_RE = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$")
SIZE_RE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|K|M|G)?\s*$")
SIZE_UNITS = {None: 1, "B": 1, "K": 1024, "KiB": 1024, "M": 1 << 20, "MiB": 1 << 20, "G": 1 << 30, "GiB": 1 << 30}
COLORS = "nrgybmcw"
COLOR_NAMES = {"black": "n", "red": "r", "green": "g", "yellow": "y", "blue": "b", "magenta": "m", "cyan": "c",
               "white": "w"}
RESERVED_CAPS = ("log", "parent", "mem_alloc", "task", "thread")
RESERVED_TAGS = ("kernel", "moe", "sigma0", "ipc")  # the console's own lines
BUILTIN_OBJECTS = {"rom": "namespace"}
PAGE = 4096
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  #: libyaml when present: same nodes and marks, faster
MAX_IMAGE_BYTES = 1 << 20  #: an image file is text a person writes: refuse anything larger before parsing
MAX_EXPANDED_NODES = 100_000  #: YAML nodes after expanding aliases (an "alias bomb" expands exponentially)


class ObjectType:
    GATE = "gate"
    IRQ = "irq"
    DATASPACE = "dataspace"
    FACTORY = "factory"
    NAMESPACE = "namespace"  # only Moe's built-in `rom`


#: Rights that make sense per object type (what a holder could ever use), and the keys of each
#: declarable type: from the registry of object kinds (``capabilities.kinds``).
ALLOWED_RIGHTS = {name: kind.rights for name, kind in IMAGE_KINDS.items()}
OBJECT_KEYS = {name: {"type", *kind.keys} for name, kind in DECLARABLE.items()}
TOP_KEYS = {"name", "description", "ram", "modules", "run", "objects", "tasks"}
TASK_KEYS = {"program", "args", "log", "memory", "restart", "restart_limit", "caps", "config", "network"}
TASK_KEYS |= {"limits"}  # kernel budgets (issue 9)
TASK_KEYS |= {"workdir"}
WORKDIR_BYTES, WORKDIR_FILES = 32 << 20, 512  #: default work-dir budget: bytes and files (inodes)
ENDPOINT_RE = re.compile(r"^(?P<host>[A-Za-z0-9.\-]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")
RESTART_POLICIES = ("never", "on-failure", "always")


@dataclasses.dataclass(frozen=True)
class Problem:
    file: str
    line: int  # 1-based
    column: int  # 1-based
    field: str  # dotted path, e.g. tasks.client.caps.ping
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.field}: {self.message}"


class ImageError(Exception):
    """The image is invalid; ``problems`` lists every problem found (file, line, field)."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclasses.dataclass(frozen=True)
class ObjectDecl:
    name: str
    type: str
    size: int = 0
    quota: int = 0
    direct: bool = False  #: a gate whose calls may get kernel-granted direct channels (docs/direct-channels.md)


@dataclasses.dataclass(frozen=True)
class CapDecl:
    name: str
    object: str
    rights: CapRights


@dataclasses.dataclass(frozen=True)
class LogDecl:
    tag: str
    color: str  # one letter from COLORS, upper case = bright


@dataclasses.dataclass(frozen=True)
class LimitsDecl:
    """Kernel budgets of one task (``limits``); every over-budget attempt is an L4 error and a violation."""

    caps: int = 1024
    mappings: int = 1024
    log_lines: int = 200  #: per second
    log_bytes: int = 65536  #: per second


LIMIT_KEYS = tuple(f.name for f in dataclasses.fields(LimitsDecl))


@dataclasses.dataclass(frozen=True)
class TaskDecl:
    name: str
    program: str
    args: tuple[str, ...]
    log: LogDecl
    memory: int
    restart: str
    restart_limit: int
    caps: tuple[CapDecl, ...]
    config: Any = None  # JSON-able data for the task (its boot record's "config")
    connect: tuple[str, ...] = ()  # network endpoints (host:port) this driver task may reach
    limits: LimitsDecl = LimitsDecl()
    workdir_bytes: int = WORKDIR_BYTES  # work-dir budget: a filesystem of this size ...
    workdir_files: int = WORKDIR_FILES  # ... with this many inodes
    restart_policy: RestartPolicy = RestartPolicy()  # the whole policy (``restart`` is its policy word)

    def cap(self, name: str) -> CapDecl | None:
        return next((c for c in self.caps if c.name == name), None)


@dataclasses.dataclass(frozen=True)
class ModuleDecl:
    name: str
    path: str  # relative to the image file
    line: int  # where it is declared, for errors about the file itself


@dataclasses.dataclass(frozen=True)
class Image:
    name: str
    file: str
    description: str
    ram: int
    modules: tuple[ModuleDecl, ...]
    run_until: tuple[str, ...]
    objects: tuple[ObjectDecl, ...]
    tasks: tuple[TaskDecl, ...]

    def object(self, name: str) -> ObjectDecl:
        if name in BUILTIN_OBJECTS:
            return ObjectDecl(name, BUILTIN_OBJECTS[name])
        return next(o for o in self.objects if o.name == name)

    def task(self, name: str) -> TaskDecl:
        return next(t for t in self.tasks if t.name == name)


def parse_size(text: str) -> int:
    m = SIZE_RE.match(str(text))
    if not m:
        raise ValueError(f"expected a size such as 4096, 4KiB or 16MiB, got {text!r}")
    return int(m.group(1)) * SIZE_UNITS[m.group(2)]


class _Checker:
    """Walks the composed YAML node tree; collects problems instead of stopping at the first."""

    def __init__(self, filename: str):
        self.file = filename
        self.problems: list[Problem] = []

    def problem(self, node: yaml.Node | None, field: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        col = node.start_mark.column + 1 if node is not None else 1
        self.problems.append(Problem(self.file, line, col, field, message))

    def mapping(self, node: yaml.Node, field: str, allowed: set[str] | None) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """Key -> (key node, value node); reports non-mappings, duplicates, unknown keys."""
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, field, f"expected a mapping, got {_kind(node)}")
            return {}
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            key = knode.value if isinstance(knode, yaml.ScalarNode) else None
            if not isinstance(key, str) or key == "":
                self.problem(knode, field, "expected a plain string key")
                continue
            sub = f"{field}.{key}" if field else key
            if key in out:
                self.problem(knode, sub,
                             f"duplicate key {key!r} (first defined on line {out[key][0].start_mark.line + 1})")
                continue
            if allowed is not None and key not in allowed:
                self.problem(knode, sub, f"unknown key {key!r} (expected one of: {', '.join(sorted(allowed))})")
                continue
            out[key] = (knode, vnode)
        return out

    def scalar(self, node: yaml.Node, field: str, what: str = "a string") -> str | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null":
            self.problem(node, field, f"expected {what}, got {_kind(node)}")
            return None
        return str(node.value)

    def integer(self, node: yaml.Node, field: str, minimum: int = 0) -> int | None:
        text = self.scalar(node, field, "an integer")
        if text is None:
            return None
        if not re.fullmatch(r"\d+", text) or int(text) < minimum:
            self.problem(node, field, f"expected an integer >= {minimum}, got {text!r}")
            return None
        return int(text)

    def size(self, node: yaml.Node, field: str) -> int | None:
        text = self.scalar(node, field, "a size")
        if text is None:
            return None
        try:
            return parse_size(text)
        except ValueError as exc:
            self.problem(node, field, str(exc))
            return None

    def duration(self, node: yaml.Node, field: str) -> float | None:
        text = self.scalar(node, field, "a duration")
        if text is None:
            return None
        try:
            return parse_duration(text)
        except ValueError as exc:
            self.problem(node, field, str(exc))
            return None

    def name(self, node: yaml.Node, field: str, what: str) -> str | None:
        text = node.value if isinstance(node, yaml.ScalarNode) else None
        if text is None or not NAME_RE.match(str(text)):
            self.problem(node, field, f"expected a {what} name matching {NAME_RE.pattern}, got {text!r}")
            return None
        return str(text)

    def sequence(self, node: yaml.Node, field: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, field, f"expected a list, got {_kind(node)}")
            return []
        return list(node.value)


def _kind(node: yaml.Node | None) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node is None or node.tag == "tag:yaml.org,2002:null":
        return "nothing"
    return f"{node.value!r}"


def parse_image(text: str, filename: str = "<image>",
                program_exists: Callable[[str], bool] | None = None) -> Image:
    """Validate the whole image; raise ``ImageError`` listing every problem found."""
    ck = _Checker(filename)
    if len(text) > MAX_IMAGE_BYTES:
        raise ImageError([Problem(filename, 1, 1, "<file>", f"the image is {len(text)} characters; at most "
                                                            f"{MAX_IMAGE_BYTES} are accepted")])
    try:
        try:
            root = yaml.compose(text, Loader=LOADER)
        except yaml.YAMLError as exc:  # say it in the pure-Python parser's words (the reference wording) ...
            if "nesting depth" in str(exc):  # ... unless it is libyaml's depth limit (Python would recurse out)
                raise RecursionError from None
            root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = Problem(filename, line, col, "<yaml>", f"not valid YAML: {getattr(exc, 'problem', exc)}")
        raise ImageError([problem]) from None
    except RecursionError:
        raise ImageError([Problem(filename, 1, 1, "<yaml>", "nested too deeply")]) from None
    if root is None:
        raise ImageError([Problem(filename, 1, 1, "<image>", "empty file: expected a mapping with 'name' and 'tasks'")])
    try:
        expanded, bomb = expanded_size(root, MAX_EXPANDED_NODES)
    except RecursionError:
        raise ImageError([Problem(filename, 1, 1, "<yaml>", "nested too deeply")]) from None
    if expanded > MAX_EXPANDED_NODES:
        ck.problem(bomb, "<yaml>", f"aliases expand this document past {MAX_EXPANDED_NODES} nodes "
                                   f"(an alias bomb?); write the data out or make it smaller")
        raise ImageError(ck.problems)
    top = ck.mapping(root, "", TOP_KEYS)

    name = ck.name(top["name"][1], "name", "image") if "name" in top else None
    if "name" not in top and isinstance(root, yaml.MappingNode):
        ck.problem(root, "name", "missing required key 'name'")
    description = ck.scalar(top["description"][1], "description") or "" if "description" in top else ""
    ram = ck.size(top["ram"][1], "ram") if "ram" in top else 64 << 20
    if ram is not None and ram < 1 << 20:
        ck.problem(top["ram"][1], "ram", f"expected at least 1MiB of RAM, got {ram} bytes")

    modules: list[ModuleDecl] = []
    if "modules" in top:
        for mname, (knode, vnode) in ck.mapping(top["modules"][1], "modules", None).items():
            if not ck.name(knode, f"modules.{mname}", "module"):
                continue
            if mname == "image":
                ck.problem(knode, f"modules.{mname}", "'image' is reserved: Moe finds the image itself there")
            elif (path := ck.scalar(vnode, f"modules.{mname}", "a file path")):
                modules.append(ModuleDecl(mname, path, vnode.start_mark.line + 1))

    objects: dict[str, ObjectDecl] = {}
    object_nodes: dict[str, yaml.Node] = {}
    broken_objects: set[str] = set()  # declared, but invalid (already reported): caps to them say nothing more
    if "objects" in top:
        for oname, (knode, vnode) in ck.mapping(top["objects"][1], "objects", None).items():
            field = f"objects.{oname}"
            broken_objects.add(oname)
            if not ck.name(knode, field, "object"):
                continue
            if oname in BUILTIN_OBJECTS or oname in RESERVED_CAPS:
                ck.problem(knode, field, f"{oname!r} is reserved for Moe's built-in objects")
                continue
            body = ck.mapping(vnode, field, None)
            if "type" not in body:
                ck.problem(vnode, f"{field}.type",
                           f"missing required key 'type' (expected one of: {', '.join(OBJECT_KEYS)})")
                continue
            otype = ck.scalar(body["type"][1], f"{field}.type")
            if otype not in OBJECT_KEYS:
                ck.problem(body["type"][1], f"{field}.type",
                           f"unknown object type {otype!r} (expected one of: {', '.join(OBJECT_KEYS)})")
                continue
            for key, (kn, _) in body.items():
                if key not in OBJECT_KEYS[otype]:
                    ck.problem(kn, f"{field}.{key}", f"unknown key {key!r} for a {otype} (expected one of: "
                                                     f"{', '.join(sorted(OBJECT_KEYS[otype]))})")
            size = quota = 0
            if "size" in OBJECT_KEYS[otype]:
                if "size" not in body:
                    ck.problem(vnode, f"{field}.size", "missing required key 'size' for a dataspace")
                    continue
                parsed = ck.size(body["size"][1], f"{field}.size")
                size = 0 if parsed is None else parsed  # None: already reported
                if parsed is not None and parsed <= 0:
                    ck.problem(body["size"][1], f"{field}.size", "expected a dataspace size > 0")
            if "quota" in OBJECT_KEYS[otype]:
                quota = ck.integer(body["quota"][1], f"{field}.quota", 1) or 0 if "quota" in body else 0
                if "quota" not in body:
                    ck.problem(vnode, f"{field}.quota", "missing required key 'quota' (objects it may create)")
            direct = False
            if "direct" in body:  # a gate: calls through it may get a kernel-granted direct channel
                flag = ck.scalar(body["direct"][1], f"{field}.direct", "true or false")
                if flag is not None and flag not in ("true", "false"):
                    ck.problem(body["direct"][1], f"{field}.direct", f"expected true or false, got {flag!r}")
                direct = flag == "true"
            objects[oname] = ObjectDecl(oname, otype, size, quota, direct)
            object_nodes[oname] = knode
            broken_objects.discard(oname)
        total = sum(-(-o.size // PAGE) * PAGE for o in objects.values() if o.type == ObjectType.DATASPACE)
        if ram is not None and total > ram:
            biggest = max((o for o in objects.values() if o.type == ObjectType.DATASPACE), key=lambda o: o.size)
            ck.problem(object_nodes[biggest.name], f"objects.{biggest.name}.size",
                       f"the image's dataspaces need {total} bytes but ram is {ram} bytes (Moe allocates every "
                       f"dataspace from RAM at boot); raise 'ram' or shrink the dataspaces")

    tasks: list[TaskDecl] = []
    task_nodes: dict[str, yaml.Node] = {}
    declared_tasks: set[str] = set()  # every task key, valid or not (run.until names them)
    used_objects: set[str] = set()
    if "tasks" not in top:
        if isinstance(root, yaml.MappingNode):
            ck.problem(root, "tasks", "missing required key 'tasks'")
    else:
        tags: dict[str, str] = {}
        for tname, (knode, vnode) in ck.mapping(top["tasks"][1], "tasks", None).items():
            field = f"tasks.{tname}"
            declared_tasks.add(tname)
            if not ck.name(knode, field, "task"):
                continue
            task = _task(ck, field, tname, vnode, objects, used_objects, program_exists, broken_objects)
            if task is None:
                continue
            if task.log.tag in tags:
                ck.problem(vnode, f"{field}.log.tag",
                           f"duplicate log tag {task.log.tag!r} (also used by task {tags[task.log.tag]!r})")
            tags[task.log.tag] = tname
            tasks.append(task)
            task_nodes[tname] = knode
        tasks_node = top["tasks"][1]
        if isinstance(tasks_node, yaml.MappingNode) and not tasks_node.value:
            ck.problem(tasks_node, "tasks", "expected at least one task")

    until: list[str] = []
    if "run" in top:
        run = ck.mapping(top["run"][1], "run", {"until"})
        if "until" in run:
            items = ck.sequence(run["until"][1], "run.until")
            if isinstance(run["until"][1], yaml.SequenceNode) and not items:
                ck.problem(run["until"][1], "run.until", "expected at least one task: an empty list never ends "
                                                         "(leave 'run' out to run until Ctrl-C or --duration)")
            for item in items:
                until_task = ck.scalar(item, "run.until", "a task name")
                if until_task is not None and until_task in declared_tasks and until_task not in task_nodes:
                    continue  # the task itself is invalid, and that is reported where it is declared
                if until_task is not None and until_task not in task_nodes:
                    ck.problem(item, "run.until",
                               f"unknown task {until_task!r} (tasks: {', '.join(task_nodes) or 'none'})")
                elif until_task is not None:
                    until.append(until_task)

    module_names = {m.name for m in modules}
    for mname in module_names & set(objects):
        ck.problem(object_nodes[mname], f"objects.{mname}", f"name {mname!r} is also a module name")

    if ck.problems:
        raise ImageError(sorted(ck.problems, key=lambda p: (p.line, p.column)))
    assert name is not None and ram is not None
    return Image(name, filename, description, ram, tuple(modules), tuple(until), tuple(objects.values()), tuple(tasks))


def _task(ck: _Checker, field: str, tname: str, node: yaml.Node, objects: dict[str, ObjectDecl],
          used: set[str], program_exists: Callable[[str], bool] | None,
          broken: AbstractSet[str] = frozenset()) -> TaskDecl | None:
    body = ck.mapping(node, field, TASK_KEYS)
    if not isinstance(node, yaml.MappingNode):
        return None
    program = None
    if "program" not in body:
        ck.problem(node, f"{field}.program",
                   "missing required key 'program' (a module under tasks/, e.g. hello.ping_server)")
    else:
        pnode = body["program"][1]
        program = ck.scalar(pnode, f"{field}.program", "a program name")
        if program is not None and not PROGRAM_RE.match(program):
            ck.problem(pnode, f"{field}.program",
                       f"expected a dotted module name such as hello.ping_server, got {program!r}")
            program = None
        elif program is not None and program_exists is not None and not program_exists(program):
            ck.problem(pnode, f"{field}.program",
                       f"no program {program!r} (expected a module tasks/{program.replace('.', '/')}.py)")
            program = None
    args: list[str] = []
    if "args" in body:
        for i, item in enumerate(ck.sequence(body["args"][1], f"{field}.args")):
            value = ck.scalar(item, f"{field}.args[{i}]", "a string argument")
            if value is not None:
                args.append(value)
    tag, color = tname[:8], "w"
    if "log" in body:
        log = ck.mapping(body["log"][1], f"{field}.log", {"tag", "color"})
        if "tag" in log:
            tag = ck.scalar(log["tag"][1], f"{field}.log.tag") or tag
            if not 0 < len(tag) <= 8:
                ck.problem(log["tag"][1], f"{field}.log.tag",
                           f"expected a tag of 1 to 8 characters (Moe pads or cuts to 8), got {tag!r}")
            elif tag.strip().lower() in RESERVED_TAGS or not tag.isprintable():
                ck.problem(log["tag"][1], f"{field}.log.tag",
                           f"{tag!r} is reserved or not printable (the console's own tags: {', '.join(RESERVED_TAGS)})")
        if "color" in log:
            cnode = log["color"][1]
            ctext = ck.scalar(cnode, f"{field}.log.color") or ""
            letter = COLOR_NAMES.get(ctext.lower(), ctext)
            if len(letter) != 1 or letter.lower() not in COLORS:
                ck.problem(cnode, f"{field}.log.color", f"expected one of the letters {COLORS} (upper case = bright) "
                                                        f"or a colour name, got {ctext!r}")
            else:
                color = letter
    if "log" not in body and tag in RESERVED_TAGS:
        ck.problem(node, f"{field}.log.tag", f"the default tag {tag!r} is reserved (the console's own tags: "
                                             f"{', '.join(RESERVED_TAGS)}); declare log.tag")
    memory = ck.size(body["memory"][1], f"{field}.memory") if "memory" in body else 1 << 20
    limit = ck.integer(body["restart_limit"][1], f"{field}.restart_limit") if "restart_limit" in body else 3
    restart_policy = RestartPolicy()
    if "restart" in body:  # the short form or the long one (capabilities/restart.py)
        restart_policy = parse_restart(ck, f"{field}.restart", body["restart"][1],
                                       limit if "restart_limit" in body else None) or RestartPolicy()
    restart = restart_policy.policy
    caps: list[CapDecl] = []
    if "caps" in body:
        for cname, (knode, vnode) in ck.mapping(body["caps"][1], f"{field}.caps", None).items():
            cfield = f"{field}.caps.{cname}"
            if not ck.name(knode, cfield, "capability"):
                continue
            if cname in RESERVED_CAPS:
                ck.problem(knode, cfield, f"{cname!r} is reserved: every task gets it from Moe")
                continue
            cap = _cap(ck, cfield, cname, vnode, objects, broken)
            if cap is not None:
                caps.append(cap)
                used.add(cap.object)
    config = _plain(body["config"][1]) if "config" in body else None
    connect: list[str] = []
    if "network" in body:
        net = ck.mapping(body["network"][1], f"{field}.network", {"connect"})
        if "connect" in net:
            for item in ck.sequence(net["connect"][1], f"{field}.network.connect"):
                text = ck.scalar(item, f"{field}.network.connect", "an endpoint host:port")
                m = ENDPOINT_RE.match(text or "")
                if text is not None and (not m or not 0 < int(m.group("port")) < 65536):
                    ck.problem(item, f"{field}.network.connect",
                               f"expected host:port such as 127.0.0.1:8443, got {text!r}")
                elif text is not None:
                    connect.append(text)
    limits = LimitsDecl()
    if "limits" in body:
        given: dict[str, int] = {}
        for key, (_knode, vnode) in ck.mapping(body["limits"][1], f"{field}.limits", set(LIMIT_KEYS)).items():
            number = ck.integer(vnode, f"{field}.limits.{key}", minimum=1)
            if number is not None and number >= 1 << 32:
                ck.problem(vnode, f"{field}.limits.{key}", f"expected an integer below 2**32, got {number}")
            elif number is not None:
                given[key] = number
        limits = LimitsDecl(**given)
    wd_bytes: int | None = WORKDIR_BYTES
    wd_files: int | None = WORKDIR_FILES
    if "workdir" in body:
        wd = ck.mapping(body["workdir"][1], f"{field}.workdir", {"size", "files"})
        if "size" in wd:
            wd_bytes = ck.size(wd["size"][1], f"{field}.workdir.size")
            if wd_bytes is not None and not 1 << 20 <= wd_bytes <= 1 << 40:
                ck.problem(wd["size"][1], f"{field}.workdir.size", "expected a size from 1MiB to 1TiB")
        if "files" in wd:
            wd_files = ck.integer(wd["files"][1], f"{field}.workdir.files", 16)
    if program is None or memory is None or limit is None or wd_bytes is None or wd_files is None:
        return None
    return TaskDecl(tname, program, tuple(args), LogDecl(tag, color), memory, restart, limit, tuple(caps),
                    config, tuple(connect), limits, wd_bytes, wd_files, restart_policy)


def expanded_size(root: yaml.Node | None, limit: int) -> tuple[int, yaml.Node | None]:
    """Nodes in ``root`` with every alias expanded (stops counting past ``limit``), and the node where it got
    there. Linear in the composed (unexpanded) graph: each distinct node is sized once."""
    sizes: dict[int, int] = {}
    worst: list[yaml.Node | None] = [root]

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        sizes[key] = limit + 1  # a node inside itself (recursive anchor) counts as too big
        total = 1
        children = node.value if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)) else ()
        for child in children:
            for sub in (child if isinstance(child, tuple) else (child,)):
                total = min(limit + 1, total + size(sub))
        sizes[key] = total
        if total > limit and worst[0] is root:
            worst[0] = node
        return total

    if root is None:
        return 0, None
    # iterative post-order would avoid recursion limits; YAML nesting is bounded by the 1 MiB text and
    # PyYAML's own composer recursion, so plain recursion is enough here
    return size(root), worst[0]


def _plain(node: yaml.Node) -> Any:
    """A YAML subtree as plain Python data (for ``config``)."""
    return yaml.safe_load(yaml.serialize(node))


def _cap(ck: _Checker, field: str, cname: str, node: yaml.Node, objects: dict[str, ObjectDecl],
         broken: AbstractSet[str] = frozenset()) -> CapDecl | None:
    if isinstance(node, yaml.MappingNode):
        body = ck.mapping(node, field, {"object", "rights"})
        if "object" not in body:
            ck.problem(node, f"{field}.object", "missing required key 'object'")
            return None
        oname = ck.scalar(body["object"][1], f"{field}.object")
        letters = ck.scalar(body["rights"][1], f"{field}.rights") if "rights" in body else "r"
        onode, rnode = body["object"][1], body.get("rights", (node, node))[1]
    else:
        text = ck.scalar(node, field, "'object:rights' or a mapping with object and rights")
        if text is None:
            return None
        oname, _, letters = text.partition(":")
        letters = letters or "r"
        onode = rnode = node
    if oname is None or letters is None or oname in broken:
        return None
    otype = BUILTIN_OBJECTS.get(oname) or (objects[oname].type if oname in objects else None)
    if otype is None:
        known = sorted(set(objects) | set(BUILTIN_OBJECTS))
        ck.problem(onode, field, f"unknown object {oname!r} (declared objects: {', '.join(known)})")
        return None
    try:
        rights = CapRights.parse(letters)
    except ValueError as exc:
        ck.problem(rnode, field, str(exc))
        return None
    extra = rights & ~ALLOWED_RIGHTS[otype]
    if extra:
        ck.problem(rnode, field, f"rights {CapRights(extra).letters()!r} mean nothing on a {otype} (allowed: "
                                 f"{ALLOWED_RIGHTS[otype].letters()})")
        return None
    return CapDecl(cname, oname, rights)
