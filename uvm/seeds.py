"""Seeds: one number per run, from which every random choice of the run is derived.

A run (`uvm run`, an experiment, a Machine made in a script) has one seed: given (--seed N,
seed= in the API, [run] seed in a scenario) or drawn from the OS and recorded. Each part that
makes random choices gets its own seed derived from it by name (`derive(seed, "vm", name)`),
so that adding a VM or a workload does not shift the random stream of the others, and the
same seed always gives a part the same stream.

What a seed fixes and what it cannot: a workload's sequence of guest operations (which
pages, reads or writes, what content) is a function of its seed alone, so its counts for a
fixed number of operations repeat exactly. The host's own random choices (the C core's
victim choice, idle sampling, the sharing scanner's picks) are seeded too, but they
interleave with the guests' threads as the OS schedules them, so faults, swap-ins, shared
pages and every timing still vary from run to run. docs/record.md lists which recorded
figures are deterministic."""

from __future__ import annotations

import hashlib
import os

SEED_MAX = (1 << 63) - 1


def check_seed(value: object, name: str = "seed") -> int:
    """Returns a seed; ValueError naming `name` unless it is an integer in [0, 2**63)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise ValueError(f"{name}: expected an integer from 0 to 2**63 - 1, got {value!r}")
    return value


def new_seed() -> int:
    """A fresh seed from the OS, for a run given none (small enough to type back)."""
    return int.from_bytes(os.urandom(4), "little") >> 1


def derive(seed: int, *path: object) -> int:
    """The seed of the part named by `path` in a run seeded with `seed`: a hash of both,
    in [1, 2**63) (never 0, which the C core reads as "no seed")."""
    text = "/".join([str(seed), *(str(p) for p in path)]).encode()
    value = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1
    return value or 1
