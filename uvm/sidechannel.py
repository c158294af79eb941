"""The page-sharing side channel: a VM learns which pages another VM holds by timing its own
writes after the sharing scanner ran.

Content-based sharing merges identical pages copy-on-write, whichever VMs hold them. A
write to a merged page faults and breaks copy-on-write (a copy and a re-map: about 20 us
here), where a write to a private page costs well under a microsecond. So an attacker that
wants to know whether a victim holds some page (a file, a key, a library version) writes
that page's content into its own memory, waits for the scanner, and times one write to it:
slow means someone else holds the same page. Nothing crosses between the VMs but timing.

`probe` plays one round on a fresh machine: a victim VM holds pages; an attacker VM holds
candidates, half of them copies of victim pages and half fresh random pages nobody else
has, plus calibration pages it knows the answer for (unique pages, and pages it holds twice,
which merge within its own VM whatever the domains); the scanner runs (`share_now`); the
attacker times one write to every calibration page and candidate (`wl_time_writes`, timed
in C: Python's own jitter would be the size of the signal). `ThresholdClassifier` is the
attacker's classifier: a threshold between the two calibration medians. With sharing across VMs it is right about
nearly every candidate; once the two VMs are in different sharing domains (salts), no
candidate is merged, every write is fast, and it can do no better than chance.

Everything is seeded: the content of every page, which candidates are held, and the
machine (Machine(seed=...)); only the latencies vary from run to run."""

from __future__ import annotations

import math
import random
import statistics
from abc import ABC, abstractmethod
from dataclasses import dataclass

from uvm._binding import ffi, lib
from uvm.machine import Machine
from uvm.sharing import DomainPolicy, Salt
from uvm.sizes import PAGE_SIZE
from uvm.vm import VM

CALIBRATION = 32        # unique pages, and pairs of identical pages, the attacker knows about


@dataclass(frozen=True)
class Probe:
    """One round of the attack: write latencies (ns) of the candidates and whether the victim
    really held each, of the attacker's calibration pages (private: unique; shared: held
    twice, so merged), and what the machine's sharing saved."""
    latencies: list[int]
    held: list[bool]
    private: list[int]
    shared: list[int]
    merged: int             # pages the scan merged
    saved: int              # frames sharing saved (machine.stats()["saved"])
    intact: bool            # every byte of both VMs read back as written


def time_writes(vm: VM, ppns: list[int]) -> list[int]:
    """Rewrites one word of each page with its own value (so nothing changes) and returns
    each write's latency in ns, as the guest sees it; VMStopped if the VM is stopped."""
    from workloads.base import check_guarded

    out = ffi.new("uint64_t[]", max(1, len(ppns)))
    check_guarded(vm, int(lib.wl_time_writes(vm._base, ffi.new("uint64_t[]", ppns), len(ppns), out)))
    return [int(out[i]) for i in range(len(ppns))]


def probe(seed: int, candidates: int = 256, share_domains: DomainPolicy = "all",
          victim_salt: Salt | None = None, attacker_salt: Salt | None = None) -> Probe:
    """Plays one round on a new machine (see the module's comment); `candidates` is even."""
    rng = random.Random(seed)
    held = [True] * (candidates // 2) + [False] * (candidates - candidates // 2)
    rng.shuffle(held)
    victim_pages = [rng.randbytes(PAGE_SIZE) for _ in range(candidates)]
    guesses = iter(rng.sample(victim_pages, candidates // 2))
    content = [next(guesses) if h else rng.randbytes(PAGE_SIZE) for h in held]
    unique = [rng.randbytes(PAGE_SIZE) for _ in range(CALIBRATION)]
    twice = [rng.randbytes(PAGE_SIZE) for _ in range(CALIBRATION)]
    attacker_pages = content + unique + twice + twice
    pages = len(attacker_pages)
    size = pages * PAGE_SIZE
    with Machine(memory=4 * size, reclaim=False, share_domains=share_domains,
                 seed=rng.getrandbits(63)) as m:
        victim = m.create_vm("victim", memory=size, share_salt=victim_salt)
        attacker = m.create_vm("attacker", memory=size, share_salt=attacker_salt)
        for vm, data in ((victim, victim_pages), (attacker, attacker_pages)):
            for ppn, page in enumerate(data):
                vm.write(ppn * PAGE_SIZE, page)
        merged = m.share_now()
        merged += m.share_now()     # pages first seen as hints merge by the second pass
        saved = m.stats()["saved"]
        n = candidates
        private = time_writes(attacker, list(range(n, n + CALIBRATION)))
        shared = time_writes(attacker, list(range(n + CALIBRATION, n + 2 * CALIBRATION)))
        latencies = time_writes(attacker, list(range(n)))
        intact = all(vm.read(ppn * PAGE_SIZE, PAGE_SIZE) == page
                     for vm, data in ((victim, victim_pages), (attacker, attacker_pages))
                     for ppn, page in enumerate(data))
        m.check()
    return Probe(latencies, held, private, shared, merged, saved, intact)


class Classifier(ABC):
    """The attacker's classifier (the side-channel lab's student writes one)."""

    @abstractmethod
    def guess(self, private: list[int], shared: list[int], latencies: list[int]) -> list[bool]:
        """Given write latencies (ns) of the attacker's own pages known to be private and
        known to be shared (calibration), and of each candidate: for each candidate, does
        the victim hold that page (was the write slow because it was shared)?"""


class ThresholdClassifier(Classifier):
    """A write slower than the threshold hit a shared page. The threshold is the geometric
    mean of the calibration medians (the two costs differ by a factor, not by an offset),
    so it holds on a faster or slower machine alike."""

    def threshold(self, private: list[int], shared: list[int]) -> float:
        """The latency (ns) that separates a private write from a copy-on-write break."""
        return math.sqrt(statistics.median(private) * statistics.median(shared))

    def guess(self, private: list[int], shared: list[int], latencies: list[int]) -> list[bool]:
        """For each candidate's write latency: does the victim hold that page?"""
        cut = self.threshold(private, shared)
        return [t > cut for t in latencies]


def accuracy(guesses: list[bool], held: list[bool]) -> float:
    """The fraction of candidates guessed right."""
    return sum(g == h for g, h in zip(guesses, held, strict=True)) / len(held)
