"""Lab sidechannel: the page-sharing side channel, and salting (paper section 4; VMware's
2014 change of default).

The student writes the attacker's classifier (uvm.sidechannel.Classifier): given the write
latencies of its own calibration pages (known private, known shared) and of the candidate
pages, guess which candidates a victim VM holds. The first two checks need no machine:
seeded synthetic latencies, drawn like the measured ones (log-normal around a private
write and a copy-on-write break, with a few private writes delayed 5-50x as preemption
does), on this machine's scale and on a much faster and a much slower one, so that a
threshold typed in as a constant fails where a calibrated one passes. The last two run the
real attack (uvm.sidechannel.probe, seeded): across VMs the classifier must read the victim;
salted, nothing is shared, so it must not claim pages are held (it flags at most 10%), and
the grader reports its accuracy, which is chance, for the student to explain.

Margins: the reference is right about 99% of synthetic candidates (the delayed private
writes are its only errors) and about 100% of real ones, against 90% and 85% asked; salted
it flags only the real private writes that were delayed past its threshold (a few in a
thousand on a loaded machine) against 10% allowed."""

from __future__ import annotations

import math
import random
from types import ModuleType

from uvm import sidechannel
from uvm.labs.base import Check, Feedback, Lab, Outcome, solution_class
from uvm.sidechannel import CALIBRATION, Classifier

CANDIDATES = 256
HELD = (0.25, 0.35, 0.65, 0.75)     # fractions of the synthetic candidates the victim holds
DELAYED = 0.02          # private writes delayed by preemption in the synthetic traces
PROFILES = {            # (private write, COW break) medians in ns
    "this machine": (20.0, 20_000.0),      # as uvm.sidechannel.probe measures here
    "a fast machine": (150.0, 3_000.0),
    "a slow machine": (6_000.0, 150_000.0),
}


def _new(module: ModuleType) -> Classifier:
    return solution_class(module, LAB, Classifier)()


def _guesses(clf: Classifier, private: list[int], shared: list[int],
             latencies: list[int]) -> list[bool]:
    """The student's guesses, or Feedback unless they are one bool per candidate."""
    got = clf.guess(list(private), list(shared), list(latencies))
    if not isinstance(got, list) or len(got) != len(latencies) or \
            any(not isinstance(g, bool) for g in got):
        raise Feedback(f"guess() returned {got!r:.80}: return a list of {len(latencies)} bools, "
                       f"one per candidate")
    return got


def _latency(rng: random.Random, median: float, sigma: float, delays: bool) -> int:
    t = median * math.exp(rng.gauss(0.0, sigma))
    if delays and rng.random() < DELAYED:
        t *= rng.uniform(5.0, 50.0)
    return max(1, round(t))


def synthetic(seed: int, profile: str) -> tuple[list[int], list[int], list[int], list[bool]]:
    """Calibration (private, shared), candidates' latencies and the truth, drawn for one
    machine profile."""
    rng = random.Random(f"{seed}:{profile}")
    fast, slow = PROFILES[profile]
    # how many candidates the victim holds varies (never about half), as an attacker cannot
    # know it: splitting the candidates at their median is no classifier
    holds = round(CANDIDATES * rng.choice(HELD))
    held = [i < holds for i in range(CANDIDATES)]
    rng.shuffle(held)
    private = [_latency(rng, fast, 0.25, True) for _ in range(CALIBRATION)]
    shared = [_latency(rng, slow, 0.3, False) for _ in range(CALIBRATION)]
    latencies = [_latency(rng, slow, 0.3, False) if h else _latency(rng, fast, 0.25, True)
                 for h in held]
    return private, shared, latencies, held


def _synthetic_accuracy(module: ModuleType, seed: int, profiles: list[str]) -> list[float]:
    clf = _new(module)
    out = []
    for profile in profiles:
        private, shared, latencies, held = synthetic(seed, profile)
        out.append(sidechannel.accuracy(_guesses(clf, private, shared, latencies), held))
    return out


def reads_synthetic(module: ModuleType, seed: int) -> Outcome:
    acc, = _synthetic_accuracy(module, seed, ["this machine"])
    return Outcome(acc >= 0.9, f"{acc:.1%} of {CANDIDATES} candidates right on latencies like "
                               f"this machine's (want >= 90%)",
                   "a write to a page the victim holds breaks copy-on-write: compare each "
                   "latency with the calibration pages' (private fast, shared slow)")


def calibrates(module: ModuleType, seed: int) -> Outcome:
    names = ["a fast machine", "a slow machine"]
    accs = _synthetic_accuracy(module, seed, names)
    shown = ", ".join(f"{n} ({PROFILES[n][0] / 1000:g} us private, {PROFILES[n][1] / 1000:g} us "
                      f"COW): {a:.1%}" for n, a in zip(names, accs))
    return Outcome(min(accs) >= 0.9, f"{shown} (want >= 90% on both)",
                   "derive the threshold from the calibration latencies, not a constant: the "
                   "costs differ by a factor on every machine, not by a fixed number of ns")


def reads_the_victim(module: ModuleType, seed: int) -> Outcome:
    clf = _new(module)
    p = sidechannel.probe(seed, CANDIDATES)
    if not p.intact:
        raise AssertionError("the attack changed a page (a bug in uvm)")
    acc = sidechannel.accuracy(_guesses(clf, p.private, p.shared, p.latencies), p.held)
    return Outcome(acc >= 0.85, f"{acc:.1%} of {CANDIDATES} candidates right with sharing "
                                f"across VMs (want >= 85%)",
                   "on the real machine too: a held candidate's write is a COW break, like the "
                   "shared calibration pages'")


def salted(module: ModuleType, seed: int) -> Outcome:
    clf = _new(module)
    p = sidechannel.probe(seed, CANDIDATES, victim_salt="victim", attacker_salt="attacker")
    guesses = _guesses(clf, p.private, p.shared, p.latencies)
    flagged = sum(guesses) / CANDIDATES
    acc = sidechannel.accuracy(guesses, p.held)
    merged = p.merged - 2 * CALIBRATION
    return Outcome(flagged <= 0.1, f"{merged} candidates merged, you flagged "
                                   f"{flagged:.1%} as held (want <= 10%), accuracy {acc:.1%} "
                                   f"(explain it: question 2)",
                   "with salts no candidate is shared, so every write is as fast as a private "
                   "one: a classifier that always flags some share of candidates (the slowest "
                   "half, say) claims pages nobody can see")


STARTER = '''\
"""Lab sidechannel: the page-sharing side channel (read HANDOUT.md first).

Complete class Attacker, then run `uvm lab check sidechannel` in this directory."""

from uvm.sidechannel import Classifier


class Attacker(Classifier):
    """Guesses which candidate pages a victim VM holds, from the time one write to each
    took in the attacker's own memory after the sharing scanner ran."""

    def guess(self, private: list[int], shared: list[int], latencies: list[int]) -> list[bool]:
        # TODO: `private` and `shared` are write latencies (ns) of your own calibration
        # pages: pages only you hold (a plain write) and pages you hold twice (merged by the
        # scanner, so each write broke copy-on-write). `latencies` are the candidates'.
        # Return one bool per candidate: True if its write looks like a copy-on-write
        # break (the victim holds the page). Derive the cut from the calibration, not from
        # a constant, and expect a few private writes to be delayed by preemption.
        raise NotImplementedError("TODO: return, for each candidate latency, whether it "
                                  "looks like a copy-on-write break")
'''

LAB = Lab(
    name="sidechannel", title="the page-sharing side channel, and salting",
    section="section 4 (content-based page sharing)", module="sidechannel.py", cls="Attacker",
    build="""
The attacker's half of a side channel that content-based page sharing opens between VMs. An
attacker VM wants to know whether a victim VM holds some page (a file, a library version, a
key). It writes that page's content into its own memory, waits for the sharing scanner, and
times one write to it: if the victim holds the same page, the scanner merged the two, and
the write faults and breaks copy-on-write (tens of microseconds); otherwise it is a plain
write (under a microsecond).

Your `Attacker.guess(private, shared, latencies)` gets the write latencies (ns) of the
attacker's calibration pages (some only it holds, some it holds twice, which the scanner
merges within its own VM) and of the candidate pages, and returns for each candidate
whether the victim holds it. See the attack run: `uvm experiment side-channel --quick`
(it prints the latencies and draws them).

Questions for your write-up: (1) what does a write to a shared page cost, step by step
(who takes the fault, what is copied, what is re-mapped), and why is a private write so
much cheaper? (2) with salting (the victim and the attacker in different sharing domains,
`create_vm(..., share_salt=...)`), the grader reports your accuracy: why is it 50%, and why
can no classifier do better, however clever? (3) `uvm experiment side-channel` also
measures what salting costs on VMs booting the same OS image: how much of the savings is
lost, and what is left? (4) uvm shares the zero page across domains even when salted: what
could an attacker learn from it?""",
    why="""
The paper's sharing saved about 60% of memory with ten VMs running the same workload, and
7% to 33% on real servers, and it does so across VMs, by design. In 2014 VMware turned sharing between VMs off by default
(intra-VM sharing stays) and added salting, after researchers showed that this timing
difference lets one VM detect what another runs and even recover keys. uvm keeps the
paper's default (`Machine(share_domains="all")`) and offers the mitigation:
`share_domains="vm"`, a callable, or a per-VM `share_salt`. Measuring both sides, what the
attacker learns and what the mitigation costs, is the trade-off an operator makes.""",
    starter=STARTER,
    checks=(
        Check("reads synthetic latencies", "on seeded latencies drawn like this machine's (a "
              "private write ~20 ns, a COW break ~20 us, 2% of private writes delayed 5-50x), "
              "at least 90% of 256 candidates right", reads_synthetic),
        Check("calibrates on another machine", "the same on a machine whose COW break costs "
              "3 us (private writes 0.15 us) and one whose COW break costs 150 us (private "
              "writes 6 us): at least 90% right on both (a constant threshold cannot)",
              calibrates),
        Check("reads the victim across VMs", "the real attack, sharing across VMs: at least "
              "85% of 256 candidates right", reads_the_victim, timeout=45.0),
        Check("salted, claims nothing", "the real attack with the two VMs salted apart: at most "
              "10% of candidates flagged as held; the accuracy is reported (explain it: "
              "question 2)", salted, timeout=45.0),
    ))
