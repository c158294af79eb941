"""Content-based page sharing: the pacing of the scanner, around the C core that hashes,
compares and merges.

The paper's scanner looks at random pages at a capped rate, per VM and machine-wide (ESX
2.x: about 50 pages/s per VM and 200 pages/s in all; later versions much more), so that the
CPU spent on sharing stays small and predictable. Here a Python thread ("uvm-share") wakes
every tick, hands each VM its share of the budget, and asks the C core to scan that many
random resident pages of it. Rates can change while guests run. `Machine.share_now()`
instead scans every resident page once, in order, which also lets runs of identical pages
share one mapping.

Dividing the budget: every VM is scanned at its own rate while the rates add up to no more
than the machine's; when they add up to more, every VM's rate is scaled down by the same
factor, so each gets the machine's rate in proportion to its own. Handing the budget out in
VM order instead (each VM its rate, until the machine's is spent) starves the last VMs
whenever the first ones' rates exhaust it: two guests booting the same OS image then never
share a page. Each VM carries the fraction of a page it was owed over to the next tick, so
that even a budget smaller than one page per VM per tick reaches every VM; stopped VMs get
none (their pages are not touched any more)."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Union, cast

from uvm._binding import lib

if TYPE_CHECKING:
    from uvm.machine import Machine

Salt = Union[str, int]
DomainPolicy = Union[str, Callable[[str], "Salt | None"]]
DOMAIN_POLICIES = ("all", "vm")
DEFAULT_DOMAINS = "all"     # the paper's behaviour: identical pages merge across VMs

DEFAULT_RATE = 200.0        # pages per second, machine-wide (ESX 2.x)
DEFAULT_VM_RATE = 50.0      # pages per second, per VM
TICK = 0.1                  # seconds between scanner rounds


def check_rate(rate: object, name: str) -> float:
    """Returns a scan rate (pages per second); ValueError naming `name` if it is not one."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < float("inf"):
        raise ValueError(f"{name}: must be a number of pages per second >= 0, got {rate!r}")
    return float(rate)


class ShareScanner:
    """The background scanner thread of one machine."""

    def __init__(self, machine: Machine, rate: float, vm_rate: float) -> None:
        self.machine = machine
        self.rate = check_rate(rate, "share_rate")
        self.vm_rate = check_rate(vm_rate, "share_rate_vm")
        self.measured_rate = 0.0        # pages actually scanned per second, last second
        self.error: BaseException | None = None
        self._credit: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="uvm-share", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            last = time.monotonic()
            window: list[tuple[float, int]] = []
            while not self._stop.wait(TICK):
                now = time.monotonic()
                scanned = self._round(now - last)
                last = now
                window = [(t, n) for t, n in window if now - t < 1.0] + [(now, scanned)]
                self.measured_rate = sum(n for _, n in window) / max(TICK, now - window[0][0] + TICK)
        except BaseException as e:  # re-raised by Machine.close()
            self.error = e

    def _round(self, dt: float) -> int:
        """Gives every VM its share of the budget for dt seconds; returns pages scanned."""
        dt = min(dt, 1.0)                   # after a stall, carry fractions, not backlogs
        live = [(vm, st["scanned"]) for vm in self.machine.vms
                if not (st := vm.stats())["stopped"]]
        rates = [self.vm_rate if vm.share_rate is None else vm.share_rate for vm, _ in live]
        scale = min(1.0, self.rate / sum(rates)) if sum(rates) > 0 else 0.0
        credit = {vm.name: self._credit.get(vm.name, 0.0) + rate * scale * dt
                  for (vm, _), rate in zip(live, rates)}
        self._credit = {name: c - int(c) for name, c in credit.items()}
        scanned = 0
        for vm, before in live:
            n = int(credit[vm.name])
            if n <= 0:
                continue
            if self.machine._share_scan(vm, n, random=True) is None:
                return scanned          # machine closing
            scanned += vm.stats()["scanned"] - before
        return scanned

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def scan(machine_handle: object, slot: int, first: int, count: int, random: bool) -> int:
    """Calls the C scanner; returns pages merged (raises OSError on a core error)."""
    r = int(lib.share_scan(machine_handle, slot, first, count, int(random)))
    if r < 0:
        raise OSError(-r, "page sharing scan failed")
    return r


# -- sharing domains -------------------------------------------------------------------------
#
# Sharing across VMs is a side channel: a write to a shared page costs a copy-on-write break
# (tens of microseconds) where a write to a private page costs nothing, so a VM that fills a
# page with a guess, waits for the scanner and times a write learns whether another VM holds
# that page (docs/sharing.md, `uvm experiment side-channel`). That is why VMware turned
# sharing between VMs off by default in 2014 and added salting: pages merge only between VMs
# with the same salt. Here every VM belongs to one sharing domain and the C core merges a
# page only with pages of its own domain. The default stays the paper's, one domain for all
# VMs ("all"), because uvm reproduces the paper and its savings; "vm" gives every VM a domain
# of its own (sharing within a VM only, VMware's default since 2014); a callable maps a VM's
# name to its salt (None: a domain of its own), and a VM's own `share_salt` (VMware's
# sched.mem.pshare.salt) puts it in the domain of that salt whatever the policy says: VMs
# with equal salts share. The core sees only domain numbers; this class hands them out,
# never reusing one (a number outlives its VMs in hints and shared frames).


def check_domains(policy: object) -> DomainPolicy:
    """Returns a sharing-domain policy; ValueError naming share_domains if it is not one."""
    if isinstance(policy, str) and policy in DOMAIN_POLICIES:
        return policy
    if callable(policy):
        return cast(DomainPolicy, policy)
    raise ValueError(f"share_domains: must be one of {list(DOMAIN_POLICIES)} or a callable "
                     f"taking a VM's name and returning its salt, got {policy!r}")


def check_salt(salt: object, name: str = "share_salt") -> Salt | None:
    """Returns a salt (a str or an int, or None for none); ValueError naming `name` otherwise."""
    if salt is None or (isinstance(salt, (str, int)) and not isinstance(salt, bool)):
        return salt
    raise ValueError(f"{name}: must be a string or an integer (VMs with equal salts share "
                     f"pages), got {salt!r}")


class ShareDomains:
    """Numbers the sharing domains of one machine: 0 is the common domain of "all"; each salt
    gets a number of its own the first time a VM uses it; under "vm" every VM without a salt
    gets a fresh one."""

    def __init__(self, policy: object) -> None:
        self.policy = check_domains(policy)
        self._salts: dict[Salt, int] = {}
        self._next = 1

    def _fresh(self) -> int:
        if self._next > lib.UVM_MAX_DOMAIN:
            raise ValueError("share_domains: this machine has used every sharing domain number")
        self._next += 1
        return self._next - 1

    def salt(self, name: str, salt: Salt | None) -> Salt | None:
        """The salt of a new VM called `name` given `salt`: its own, else the callable's
        (called here, so callers need hold no lock the callable might want)."""
        if salt is None and callable(self.policy):
            return check_salt(self.policy(name), "share_domains")
        return salt

    def domain(self, salt: Salt | None) -> int:
        """The domain number of a new VM with `salt` (from salt(); None: as the policy says)."""
        if salt is not None:
            if salt not in self._salts:
                self._salts[salt] = self._fresh()
            return self._salts[salt]
        return 0 if self.policy == "all" else self._fresh()


def set_domain(machine_handle: object, slot: int, domain: int) -> None:
    """Tells the C core a new VM's sharing domain."""
    r = int(lib.vm_set_share_domain(machine_handle, slot, domain))
    if r < 0:
        raise OSError(-r, f"sharing domain not set: {errno.errorcode.get(-r, r)}")
