"""Scenario files: a machine, how long to run, and the VMs with their workloads, in TOML.

    [machine]
    memory = "96MiB"            # any keyword of uvm.Machine: swap_size, fault_around, ...
    share_domains = "vm"        # pages merge within a VM only (default "all": across VMs)

    [run]
    duration = 20               # seconds
    every = 1.0                 # sample period, seconds
    seed = 7                    # optional: the run's seed (default: drawn, and recorded)

    [policy]                    # optional: the paper's memory policy (absent: none)
    tax_rate = 0.75             # the idle memory tax tau, in [0, 1)
    sample_period = 2.0         # idle sampling period, seconds (default 30)
    target_period = 1.0         # how often targets are recomputed (default 5)

    [[vm]]
    name = "hot"
    memory = "64MiB"
    shares = 2000               # its claim on memory (default 1000; needs [policy] to matter)
    min = "16MiB"               # guaranteed memory (admission control; default 0)
    share_salt = "tenant-a"     # optional: pages merge only with VMs of the same salt
    [vm.workload]               # optional; `kind` is one of workloads.KINDS,
    kind = "working-set"        # the rest are that workload's constructor parameters
    size = "48MiB"
    pattern = "zipf"

    [[vm]]
    name = "guest"
    memory = "64MiB"
    [vm.os]                     # boot the toy guest OS (uvm.guest.boot's keywords)
    disk_latency = 0.0002       # and its balloon driver (balloon = false: none)
    [vm.workload]
    kind = "file-cache"         # guest workloads run as processes of its OS
    [[vm.balloon]]              # balloon targets over time
    at = 5.0                    # seconds into the run
    target = "24MiB"            # a size, or an integer number of pages

[policy] takes every field of uvm.MemoryPolicy that a file can give (see PolicySpec):
allocation, victims and estimator by name, thresholds as a table {high, soft, hard, low}.
While a policy runs, its scheduler sets balloon targets itself, so [[vm.balloon]] targets
set by hand are refused: drop the [policy] table to drive a balloon by hand.

Each table is parsed into a dataclass below: to add a field, add it to the dataclass (its type
hint is checked, unknown keys are rejected) and, if its value needs checking, check it in
`__post_init__` raising ValueError("field: what is wrong"). Every error names the file and
the field path, e.g. `s.toml: vm[1].workload.pattern: must be one of [...], got 'zig'`.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import math
import re
import time
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import uvm.guest
from uvm.balloon import DEFAULT_MAX_FRACTION
from uvm.machine import Machine
from uvm.periods import check_period, check_seconds
from uvm.policy import (ActivityEstimator, AllocationPolicy, ColdVictims, IdleTax, LastPeriod,
                        PaperEstimator, RandomVictims, ShareProportional, Thresholds,
                        VictimPolicy)
from uvm.policy.states import STATES
from uvm.scheduler import MemoryPolicy
from uvm.seeds import check_seed, derive, new_seed
from uvm.sharing import DOMAIN_POLICIES, check_rate, check_salt
from uvm.sizes import PAGE_SIZE, format_size, parse_pages
from uvm.vm import VM, check_shares
from workloads import KINDS, Workload

DEFAULT_RESOURCE = "default_scenario.toml"


MAX_BYTES = 1 << 47         # 128 TiB, a process's address space: no machine, VM or disk is larger
MAX_VMS = 256               # the C core's limit (cext/core.h)
MAX_TEXT = 1 << 20          # bytes of TOML: a scenario is a page or two, not a data set
MAX_DEPTH = 32              # nesting of tables and arrays
SHOWN_DEPTH = 4             # levels of a field path an error shows: vm[0].workload.phases


class ScenarioError(ValueError):
    """A scenario that cannot run; the message names the file and the field."""


def check_pages(value: object, name: str, zero: bool = False) -> int:
    """A size in pages (uvm.sizes.parse_pages), at most MAX_BYTES; ValueError naming `name`."""
    try:
        pages = parse_pages(value, name, zero)
    except OverflowError:           # a size string too large for a float
        pages = MAX_BYTES + 1
    if pages * PAGE_SIZE > MAX_BYTES:
        raise ValueError(f"{name}: {_show(value)} is too large (at most {format_size(MAX_BYTES)}, "
                         f"the address space of a process)")
    return pages


@dataclass
class WorkloadSpec:
    """A [vm.workload] table: the workload kind and its constructor parameters."""
    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    def create(self, seed: int | None = None) -> Workload:
        """A fresh workload object (each run needs its own); `seed` is its seed unless the
        table gives one (kinds without a seed parameter ignore it)."""
        params = dict(self.params)
        if seed is not None and "seed" in inspect.signature(KINDS[self.kind]).parameters:
            params.setdefault("seed", seed)
        return KINDS[self.kind](**params)


@dataclass
class OSSpec:
    """A [vm.os] table: the VM boots the toy guest OS (keyword arguments of uvm.guest.boot;
    None: boot's default) and, unless balloon = false, its balloon driver."""
    disk: int | str | None = None
    disk_dir: str | None = None             # where the disk's (unlinked) file goes
    disk_latency: float | None = None
    disk_bandwidth: float | None = None
    balloon: bool | None = None
    balloon_period: float | None = None
    balloon_max: float | None = None        # the balloon's maximum, a fraction of the VM
    page_struct: int | None = None          # bytes of the page-frame array per PPN

    def __post_init__(self) -> None:
        if self.disk is not None:
            check_pages(self.disk, "disk")
        if self.disk_latency is not None:
            check_seconds(self.disk_latency, "disk_latency", zero=True)
        if self.balloon_period is not None:
            check_seconds(self.balloon_period, "balloon_period")
        if self.disk_bandwidth is not None and not (math.isfinite(self.disk_bandwidth)
                                                    and self.disk_bandwidth >= 0):
            raise ValueError(f"disk_bandwidth: must be a number >= 0, got {self.disk_bandwidth!r}")
        if self.balloon_max is not None and not 0 <= self.balloon_max <= 1:
            raise ValueError(f"balloon_max: must be a number in [0, 1], got {self.balloon_max!r}")

    def boot_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k != "balloon_max"}


@dataclass
class BalloonStep:
    """A [[vm.balloon]] entry: at `at` seconds into the run, set the balloon's target to
    `target` (a size such as "16MiB", or an integer number of pages; 0 deflates it)."""
    at: float
    target: int | str

    def __post_init__(self) -> None:
        check_seconds(self.at, "at", zero=True)
        if isinstance(self.target, int) and self.target < 0:
            raise ValueError(f"target: must be >= 0 pages, got {self.target}")

    @property
    def pages(self) -> int:
        return self.target if isinstance(self.target, int) else check_pages(self.target, "target")


@dataclass
class VMSpec:
    """A [[vm]] entry."""
    name: str
    memory: int | str
    workload: WorkloadSpec | None = None
    share_rate: float | None = None         # this VM's sharing scan rate (pages/s)
    shares: int | None = None               # its claim on memory (None: the default, 1000)
    min: int | str | None = None            # guaranteed memory (None: 0)
    share_salt: str | int | None = None     # its sharing domain's salt (None: [machine]'s)
    os: OSSpec | None = None
    balloon: list[BalloonStep] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.name or not self.name.isprintable():
            raise ValueError(f"name: expected a non-empty printable string, got {self.name!r}")
        pages = check_pages(self.memory, "memory")
        if self.share_rate is not None:
            check_rate(self.share_rate, "share_rate")
        if self.shares is not None:
            check_shares(self.shares)
        check_salt(self.share_salt)
        if self.min is not None:
            min_pages = check_pages(self.min, "min", zero=True)
            if min_pages > pages:
                raise ValueError(f"min: {format_size(min_pages * PAGE_SIZE)} is more than the VM's "
                                 f"memory ({format_size(pages * PAGE_SIZE)})")

    def create_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of Machine.create_vm for shares, min and share_salt, the ones
        that are set."""
        return {k: v for k, v in (("shares", self.shares), ("min", self.min),
                                  ("share_salt", self.share_salt)) if v is not None}

    def check_balloon(self, path: str) -> None:
        """Balloon targets need an OS with a balloon driver and must fit its maximum."""
        if not self.balloon:
            return
        if self.os is None or self.os.balloon is False:
            raise ValueError(f"{path}.balloon: balloon targets need a guest OS with its balloon "
                             f"driver ([vm.os] with balloon = true)")
        fraction = DEFAULT_MAX_FRACTION if self.os.balloon_max is None else self.os.balloon_max
        most = int(fraction * check_pages(self.memory, "memory"))
        for i, step in enumerate(self.balloon):
            if step.pages > most:
                raise ValueError(f"{path}.balloon[{i}].target: {step.pages} pages is beyond the "
                                 f"balloon's maximum of {most} pages ({fraction:.0%} of the VM)")


ALLOCATIONS: dict[str, type[AllocationPolicy]] = {"idle-tax": IdleTax,
                                                  "share-proportional": ShareProportional}
VICTIMS: dict[str, type[VictimPolicy]] = {"random": RandomVictims, "cold": ColdVictims}
ESTIMATORS: dict[str, type[ActivityEstimator]] = {"paper": PaperEstimator,
                                                  "last-period": LastPeriod}


@dataclass
class PolicySpec:
    """The [policy] table: the memory policy's settings (None: MemoryPolicy's default), the
    replaceable policies by name, and `thresholds` (a [policy.thresholds] table)."""
    tax_rate: float | None = None
    allocation: str = "idle-tax"
    victims: str = "random"
    estimator: str = "paper"
    thresholds: Thresholds | None = None
    sample_period: float | None = None
    sample_size: int | None = None
    target_period: float | None = None
    tick: float | None = None

    def __post_init__(self) -> None:
        for name, choices in (("allocation", ALLOCATIONS), ("victims", VICTIMS),
                              ("estimator", ESTIMATORS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}: must be one of {sorted(choices)}, "
                                 f"got {getattr(self, name)!r}")
        if self.tax_rate is not None and self.allocation != "idle-tax":
            raise ValueError(f"tax_rate: only the idle-tax allocation has a tax rate "
                             f"(allocation is {self.allocation!r})")
        self.build()                        # MemoryPolicy checks the rest, naming the field

    def build(self) -> MemoryPolicy:
        """A fresh MemoryPolicy (its policies keep state: each machine needs its own)."""
        kwargs: dict[str, Any] = {k: getattr(self, k) for k in
                                  ("tax_rate", "thresholds", "sample_period", "sample_size",
                                   "target_period", "tick") if getattr(self, k) is not None}
        if self.allocation != "idle-tax":
            kwargs["allocation"] = ALLOCATIONS[self.allocation]()
        return MemoryPolicy(victims=VICTIMS[self.victims](), estimator=ESTIMATORS[self.estimator],
                            **kwargs)

    def describe(self) -> str:
        """One line for people: what the policy is and how fast it samples."""
        policy = self.build()
        alloc = (f"idle tax {policy.tax_rate:g}" if self.allocation == "idle-tax"
                 else self.allocation)
        return (f"{alloc}, {self.victims} victims, {policy.sample_size} pages sampled every "
                f"{policy.sample_period:g} s, targets every {policy.target_period:g} s")


@dataclass
class MachineSpec:
    """The [machine] table: keyword arguments of uvm.Machine (None: Machine's default)."""
    memory: int | str
    swap_size: int | str | None = None
    swap_file: str | None = None
    swap_dir: str | None = None
    fault_around: int | None = None
    swap_readahead: int | None = None
    pagers: int | list[int] | None = None
    reclaim: bool | None = None
    sharing: bool | None = None
    share_rate: float | None = None
    share_rate_vm: float | None = None
    share_domains: str | None = None        # "all" or "vm" (a file cannot give a callable)
    swap_latency: float | None = None

    def __post_init__(self) -> None:
        check_pages(self.memory, "memory")
        if self.share_domains is not None and self.share_domains not in DOMAIN_POLICIES:
            raise ValueError(f"share_domains: must be one of {list(DOMAIN_POLICIES)}, "
                             f"got {self.share_domains!r}")
        if self.swap_size is not None:
            check_pages(self.swap_size, "swap_size")
        for name in ("share_rate", "share_rate_vm"):
            if getattr(self, name) is not None:
                check_rate(getattr(self, name), name)

    def kwargs(self) -> dict[str, Any]:
        """The fields that are set, as Machine(...) keyword arguments."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class RunSpec:
    """The [run] table (seed None: each run draws one)."""
    duration: float = 20.0
    every: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.seed is not None:
            check_seed(self.seed)
        self.duration = check_seconds(self.duration, "duration")
        self.every = check_period(self.every, "every")


@dataclass
class Scenario:
    """A whole scenario; `source` is the file it came from (for messages)."""
    source: str
    machine: MachineSpec
    run: RunSpec
    vms: list[VMSpec]
    policy: PolicySpec | None = None        # None: no memory policy

    @property
    def name(self) -> str:
        return Path(self.source).stem


# -- loading ----------------------------------------------------------------------------

def load(path: str | Path) -> Scenario:
    """Reads and checks a scenario file; raises ScenarioError naming the file and field."""
    path = Path(path)
    try:
        text = read_text(path, MAX_TEXT, "scenario")
    except ValueError as e:
        raise ScenarioError(str(e)) from e
    return loads(text, source=str(path), base=path.resolve().parent)   # recorded paths absolute


def read_text(path: str | Path, limit: int, what: str) -> str:
    """The UTF-8 text of the file at `path`, reading at most `limit` bytes (never all of a
    huge file, or of /dev/zero); ValueError "PATH: ..." naming `what` it should hold if it
    cannot be read, is longer, or is not text."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ValueError(f"{path}: the file is too long for a {what} (at most {limit} bytes)")
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not a UTF-8 text file"
        raise ValueError(f"{path}: cannot read the {what}: {reason}") from e


def default() -> Scenario:
    """The built-in scenario `uvm run` runs without a file."""
    text = resources.files("uvm").joinpath(DEFAULT_RESOURCE).read_text(encoding="utf-8")
    return loads(text, source=DEFAULT_RESOURCE)


def loads(text: str, source: str = "<scenario>", base: Path | None = None) -> Scenario:
    """Parses scenario TOML; relative swap paths are taken from `base` (the file's folder)."""
    try:
        _check_extent(text)
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"invalid TOML: {e}") from e
        except RecursionError as e:
            raise ValueError("invalid TOML: tables or arrays nested too deeply") from e
    except ValueError as e:
        raise ScenarioError(f"{source}: {e}") from e
    return parse(doc, source, base)


def parse(doc: dict[str, Any], source: str = "<scenario>", base: Path | None = None) -> Scenario:
    """Checks a scenario already read from TOML (a sweep edits the tables before this)."""
    try:
        _check_depth(doc, "", 0)
        return _scenario(doc, source, base)
    except ValueError as e:
        raise ScenarioError(f"{source}: {e}") from e


_VM_HEADER = re.compile(r"^[ \t]*\[\[[ \t]*vm[ \t]*\]\]", re.MULTILINE)


def _check_extent(text: str) -> None:
    """Refuses, before parsing, text that is too long or has too many [[vm]] entries to be
    a scenario (a million took minutes and gigabytes to parse, only to be refused)."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_TEXT:
        raise ValueError(f"the file is too long for a scenario (at most {MAX_TEXT} bytes)")
    vms = len(_VM_HEADER.findall(text))
    if vms > MAX_VMS:
        raise ValueError(f"vm: at most {MAX_VMS} [[vm]] entries, got {vms}")


def _check_depth(value: object, path: str, depth: int) -> None:
    """Refuses tables and arrays nested deeper than any scenario field goes; the message
    names the field (its first SHOWN_DEPTH levels), not the whole way down."""
    if depth > MAX_DEPTH:
        raise ValueError(f"{path}: tables or arrays nested too deeply (at most {MAX_DEPTH} levels)")
    items = (value.items() if isinstance(value, dict)
             else enumerate(value) if isinstance(value, list) else ())
    for key, item in items:
        where = (path if depth >= SHOWN_DEPTH else f"{path}[{key}]" if isinstance(key, int)
                 else f"{path}.{key}" if path else key)
        _check_depth(item, where, depth + 1)


def _scenario(doc: dict[str, Any], source: str, base: Path | None) -> Scenario:
    _reject_unknown(doc, {"machine", "run", "policy", "vm"}, "", "table")
    if "machine" not in doc:
        raise ValueError("machine: missing (a [machine] table with at least `memory` is required)")
    machine = _record(MachineSpec, doc["machine"], "machine")
    if base is not None:
        machine = _resolve_paths(machine, base)
    run = _record(RunSpec, doc.get("run", {}), "run")
    raw_vms = doc.get("vm", [])
    if not isinstance(raw_vms, list):
        raise ValueError(f"vm: expected [[vm]] entries (an array of tables), got {_show(raw_vms)}")
    if not raw_vms:
        raise ValueError("vm: at least one [[vm]] entry is required")
    if len(raw_vms) > MAX_VMS:
        raise ValueError(f"vm: at most {MAX_VMS} [[vm]] entries, got {len(raw_vms)}")
    vms = [_vm(raw, f"vm[{i}]") for i, raw in enumerate(raw_vms)]
    _check_unique_names(vms)
    policy = _policy(doc["policy"], "policy") if "policy" in doc else None
    if policy is not None:
        _check_no_hand_balloons(vms)
    return Scenario(source, machine, run, vms, policy)


def _policy(raw: object, path: str) -> PolicySpec:
    table = dict(_table(raw, path))
    thresholds = table.pop("thresholds", None)
    if thresholds is not None:
        where = f"{path}.thresholds"
        _check_params(_table(thresholds, where), {name: (float, False) for name in STATES},
                      where, "threshold")
        with _at(path):
            table["thresholds"] = Thresholds(**thresholds)
    return _record(PolicySpec, table, path)


def _check_no_hand_balloons(vms: list[VMSpec]) -> None:
    """Balloon targets set by hand would fight the scheduler, which sets them every tick."""
    for i, vm in enumerate(vms):
        if vm.balloon:
            raise ValueError(f"vm[{i}].balloon: balloon targets cannot be set by hand while a "
                             f"memory policy runs (its scheduler sets them); remove the "
                             f"[[vm.balloon]] entries or the [policy] table")


def _resolve_paths(spec: MachineSpec, base: Path) -> MachineSpec:
    """Relative swap paths are relative to the scenario file, not the working directory."""
    return dataclasses.replace(spec, swap_file=_under(base, spec.swap_file),
                               swap_dir=_under(base, spec.swap_dir))


def _under(base: Path, path: str | None) -> str | None:
    return None if path is None else str(base / Path(path).expanduser())


def _vm(raw: object, path: str) -> VMSpec:
    table = dict(_table(raw, path))
    workload = table.pop("workload", None)
    os_table = table.pop("os", None)
    steps = table.pop("balloon", [])
    spec = _record(VMSpec, table, path)
    if workload is not None:
        spec.workload = _workload(workload, f"{path}.workload")
    if os_table is not None:
        spec.os = _record(OSSpec, os_table, f"{path}.os")
    if not isinstance(steps, list):
        raise ValueError(f"{path}.balloon: expected [[vm.balloon]] entries, got {_show(steps)}")
    spec.balloon = [_record(BalloonStep, step, f"{path}.balloon[{i}]") for i, step in enumerate(steps)]
    spec.check_balloon(path)
    return spec


def _workload(raw: object, path: str) -> WorkloadSpec:
    params = dict(_table(raw, path))
    if "kind" not in params:
        raise ValueError(f"{path}.kind: missing (one of {sorted(KINDS)})")
    kind = params.pop("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"{path}.kind: must be one of {sorted(KINDS)}, got {_show(kind)}")
    _check_params(params, _signature_params(KINDS[kind]), path, f"parameter of {kind!r}")
    spec = WorkloadSpec(kind, params)
    with _at(path):
        spec.create()
    return spec


def _check_unique_names(vms: list[VMSpec]) -> None:
    seen: dict[str, int] = {}
    for i, vm in enumerate(vms):
        if vm.name in seen:
            raise ValueError(f"vm[{i}].name: duplicate VM name {vm.name!r} "
                             f"(vm[{seen[vm.name]}] has it too)")
        seen[vm.name] = i


# -- generic checks: tables against dataclasses and signatures ----------------------------

Param = tuple[object, bool]     # (type hint, required)
T = typing.TypeVar("T")


@contextmanager
def _at(path: str) -> Iterator[None]:
    """Prefixes a ValueError raised inside with the field path it concerns: a message
    "size: ..." under path "vm[0].workload" becomes "vm[0].workload.size: ..." (and
    "thresholds.high: ..." under "policy", "policy.thresholds.high: ...")."""
    try:
        yield
    except (ValueError, OverflowError) as e:    # OverflowError: a number too large for C
        msg = str(e)
        joined = f"{path}.{msg}" if re.match(r"\w[\w.\[\]]*: ", msg) else f"{path}: {msg}"
        raise ValueError(joined) from e


def _table(raw: object, path: str) -> Mapping[str, Any]:
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a table, got {_show(raw)}")
    return raw


def _record(cls: type[T], raw: object, path: str) -> T:
    """Builds dataclass `cls` from a TOML table, checking keys and types first."""
    table = _table(raw, path)
    hints = typing.get_type_hints(cls)
    params = {f.name: (hints[f.name], f.default is dataclasses.MISSING
                       and f.default_factory is dataclasses.MISSING)
              for f in dataclasses.fields(cls)}       # type: ignore[arg-type]
    _check_params(table, params, path, "key")
    with _at(path):
        return cls(**table)


def _signature_params(cls: type[Workload]) -> dict[str, Param]:
    """A workload's constructor parameters, as the scenario may give them."""
    hints = typing.get_type_hints(cls.__init__)
    sig = inspect.signature(cls.__init__)
    return {name: (hints.get(name, Any), p.default is inspect.Parameter.empty)
            for name, p in sig.parameters.items() if name != "self"}


def _check_params(table: Mapping[str, Any], params: dict[str, Param], path: str, what: str) -> None:
    _reject_unknown(table, set(params), path, what)
    for name, (hint, required) in params.items():
        where = f"{path}.{name}"
        if name not in table:
            if required:
                raise ValueError(f"{where}: missing (required)")
        elif not _type_ok(table[name], hint):
            raise ValueError(f"{where}: expected {_describe(hint)}, got {_show(table[name])}")


def _reject_unknown(table: Mapping[str, Any], known: set[str], path: str, what: str) -> None:
    for key in table:
        if key not in known:
            where = f"{path}.{key}" if path else key
            raise ValueError(f"{where}: unknown {what} (expected one of: {', '.join(sorted(known))})")


def _type_ok(value: object, hint: object) -> bool:
    """Whether a TOML value fits a type hint; hints it does not know accept anything (the
    constructor checks those)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if origin in (list, collections.abc.Sequence):
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is tuple:
        items = typing.get_args(hint)
        return (isinstance(value, list) and len(value) == len(items)
                and all(_type_ok(v, h) for v, h in zip(value, items)))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return hint is not type(None)


_NAMES: dict[object, str] = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _describe(hint: object) -> str:
    """Says what a type hint accepts, in TOML terms."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint) if h is not type(None))
    if typing.get_origin(hint) in (list, collections.abc.Sequence):
        return f"an array (each item {_describe(typing.get_args(hint)[0])})"
    if typing.get_origin(hint) is tuple:
        return f"an array [{', '.join(_describe(h) for h in typing.get_args(hint))}]"
    return _NAMES.get(hint, str(hint))


def _show(value: object) -> str:
    """A value as it would look in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


# -- running -----------------------------------------------------------------------------

def launch(scenario: Scenario, seed: int | None = None) -> Machine:
    """Creates the scenario's machine and VMs and starts their workloads; errors name the
    field (e.g. a working set larger than its VM), and leave no machine behind. `seed`
    (default: the file's [run] seed, else drawn) seeds the machine and every workload whose
    table gives no seed of its own, each with a seed derived by name (uvm/seeds.py)."""
    seed = run_seed(scenario) if seed is None else check_seed(seed)
    try:
        policy = scenario.policy.build() if scenario.policy is not None else False
        with _at("machine"):
            machine = Machine(**scenario.machine.kwargs(), policy=policy,
                              seed=derive(seed, "machine"))
    except ValueError as e:
        raise ScenarioError(f"{scenario.source}: {e}") from e
    except OSError as e:        # e.g. ENOMEM: more memory or swap than the host can map
        raise ScenarioError(f"{scenario.source}: machine: {e.strerror or e} (check memory "
                            f"and swap_size)") from e
    try:
        _populate(machine, scenario, seed)
    except BaseException:
        machine.close()
        raise
    return machine


def run_seed(scenario: Scenario) -> int:
    """The file's [run] seed, or a fresh one."""
    return new_seed() if scenario.run.seed is None else scenario.run.seed


class BalloonSchedule(Workload):
    """A VM's [[vm.balloon]] steps, played as a workload of the VM: at each step's time
    (seconds from its start) it sets the balloon's target. Running as a workload gives it a
    named thread that the machine stops on close, and makes its errors the VM's errors:
    shown in the VM's status, and failing `uvm run` (exit status 1)."""

    kind = "balloon-schedule"
    NAP = 0.05          # seconds between looks at the clock (and at stop)

    def __init__(self, steps: list[BalloonStep]) -> None:
        in_order = sorted(((step.at, step.pages) for step in steps), key=lambda s: s[0])
        self.steps = in_order[::-1]             # the next step last: pop() takes it
        self._start = 0.0

    def start(self, vm: VM) -> None:
        self._start = time.monotonic()

    def step(self, vm: VM) -> int | None:
        if not self.steps:
            return None
        at, pages = self.steps[-1]
        wait = self._start + at - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, self.NAP))
            return 0
        vm.balloon.target = pages
        self.steps.pop()
        return 1


def _boot(vm: VM, spec: OSSpec) -> None:
    """Boots the VM's guest OS; an OSError (e.g. EFBIG: a disk larger than the filesystem
    allows) becomes a ValueError saying so."""
    try:
        uvm.guest.boot(vm, **spec.boot_kwargs())
    except OSError as e:
        raise ValueError(f"cannot boot the guest OS: {e.strerror or e} (check disk)") from e


def _populate(machine: Machine, scenario: Scenario, seed: int) -> None:
    for i, spec in enumerate(scenario.vms):
        try:
            with _at(f"vm[{i}]"):
                vm = machine.create_vm(spec.name, spec.memory, **spec.create_kwargs())
                vm.share_rate = spec.share_rate
            if spec.os is not None:
                with _at(f"vm[{i}].os"):
                    if spec.os.balloon_max is not None:
                        vm.balloon.max_fraction = spec.os.balloon_max
                    _boot(vm, spec.os)
                if spec.balloon:
                    vm.run(BalloonSchedule(spec.balloon))
            if spec.workload is not None:
                with _at(f"vm[{i}].workload"):
                    vm.run(spec.workload.create(derive(seed, "vm", spec.name)))
        except ValueError as e:
            raise ScenarioError(f"{scenario.source}: {e}") from e
