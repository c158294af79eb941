"""A scenario as it really ran: every table with every default filled in, for the run
record (uvm/record.py). Values a file leaves out are taken from the constructors' defaults
(Machine, MemoryPolicy, the workload's class, uvm.guest.boot) or from the launched machine
where they are computed (swap capacity, seeds), so that the record alone can run it again."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import uvm.guest
from uvm.balloon import DEFAULT_MAX_FRACTION
from uvm.machine import Machine
from uvm.record import Header, header
from uvm.scenario import BalloonStep, OSSpec, PolicySpec, Scenario, VMSpec
from uvm.seeds import derive
from uvm.sizes import PAGE_SIZE, parse_pages
from workloads import KINDS

NOT_RECORDED = {"debug"}        # Machine keywords that are not part of a scenario


def scenario_header(spec: Scenario, machine: Machine, seed: int, duration: float,
                    every: float) -> Header:
    """The run record of the launched scenario `spec` (uvm/record.py)."""
    return header(kind="run", name=spec.name, config=scenario_config(spec, machine, seed, duration, every),
                  seed=seed, seeds=seeds(spec, machine, seed), machine=machine)


def scenario_config(spec: Scenario, machine: Machine, seed: int, duration: float,
                    every: float) -> dict[str, Any]:
    """The launched scenario `spec` (run for `duration` s, sampled every `every` s, seeded
    with `seed`) as a JSON-able dict, every default filled in."""
    machine_config = _machine(spec, machine)
    vms = [_vm(v, machine, seed) for v in spec.vms]
    for vm in vms:
        if vm["share_rate"] is None:
            vm["share_rate"] = machine_config["share_rate_vm"]
    return {"source": spec.source, "machine": machine_config,
            "run": {"duration_s": duration, "every_s": every, "seed": seed},
            "policy": None if spec.policy is None else _policy(spec.policy), "vms": vms}


def seeds(spec: Scenario, machine: Machine, seed: int) -> dict[str, int]:
    """The seeds derived from the run's: the machine's and each VM's workload's."""
    out = {"machine": machine.seed}
    for v in spec.vms:
        if v.workload is not None and "seed" in _defaults(KINDS[v.workload.kind]):
            out[f"vm/{v.name}"] = v.workload.params.get("seed", derive(seed, "vm", v.name))
    return out


def _defaults(fn: Callable[..., Any]) -> dict[str, Any]:
    """A callable's keyword parameters and their defaults (None for required ones)."""
    return {name: None if p.default is inspect.Parameter.empty else p.default
            for name, p in inspect.signature(fn).parameters.items()
            if name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD}


def _machine(spec: Scenario, machine: Machine) -> dict[str, Any]:
    given = spec.machine.kwargs()
    out = {k: v for k, v in _defaults(Machine).items() if k not in NOT_RECORDED | {"policy"}}
    out.update(given)
    # pagers and swap_dir as the scenario gave them (null: the default, one pager per CPU,
    # a swap file in $TMPDIR or /var/tmp), so that uvm/again.py can run the record on
    # another host; what this host made of them beside, under names no scenario takes
    out.update(memory=machine.memory, swap_size=machine.swap_capacity, seed=machine.seed,
               fault_around=machine.fault_around, swap_readahead=machine.swap_readahead,
               swap_latency=machine.swap_latency, pager_cpus=machine.pager_cpus,
               swap_dir_used=machine.swap_dir)
    return out


def _policy(spec: PolicySpec) -> dict[str, Any]:
    policy = spec.build()
    return {"allocation": spec.allocation, "victims": spec.victims, "estimator": spec.estimator,
            "tax_rate": policy.tax_rate, "thresholds": dataclasses.asdict(policy.thresholds),
            "sample_period": policy.sample_period, "sample_size": policy.sample_size,
            "target_period": policy.target_period, "tick": policy.tick}


def _vm(spec: VMSpec, machine: Machine, seed: int) -> dict[str, Any]:
    vm = machine.vm(spec.name)
    out: dict[str, Any] = {"name": spec.name, "memory": vm.size, "shares": vm.shares,
                           "min": vm.min * PAGE_SIZE, "share_rate": spec.share_rate,
                           "share_salt": vm.share_salt,
                           "workload": None, "os": None, "balloon": []}
    if spec.workload is not None:
        kind = KINDS[spec.workload.kind]
        params = _defaults(kind)
        params.update(spec.workload.params)
        if "seed" in params and "seed" not in spec.workload.params:
            params["seed"] = derive(seed, "vm", spec.name)
        out["workload"] = {"kind": spec.workload.kind, **params}
    if spec.os is not None:
        out["os"] = _os(spec.os)
        out["balloon"] = [_step(s) for s in spec.balloon]
    return out


def _os(spec: OSSpec) -> dict[str, Any]:
    out = {k: v for k, v in _defaults(uvm.guest.boot).items() if k != "vm"}
    out.update(spec.boot_kwargs())
    out["balloon_max"] = DEFAULT_MAX_FRACTION if spec.balloon_max is None else spec.balloon_max
    return out


def _step(step: BalloonStep) -> dict[str, Any]:
    pages = step.target if isinstance(step.target, int) else parse_pages(step.target, "target")
    return {"at_s": step.at, "target_pages": pages}
