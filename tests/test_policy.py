"""The policy layer's pure parts, on chosen numbers: the idle memory tax's rho, the order in
which min-funding revocation reclaims, the alternative allocation, the estimators and the
reclamation states with their hysteresis."""

from __future__ import annotations

import pytest

from uvm.policy import (IdleTax, LastPeriod, PaperEstimator, ReclaimStates, ShareProportional,
                        Thresholds, VMInfo, shares_per_page)
from uvm.scheduler import MemoryPolicy


def vm(name: str, shares: int = 1000, demand: int = 1000, active: float = 1.0, min: int = 0,
       max: int = 10_000) -> VMInfo:
    return VMInfo(name, shares, min, max, allocated=demand, demand=demand, active=active)


@pytest.mark.parametrize("S, P, f, tau", [(1000, 500, 0.2, 0.75), (1000, 500, 0.2, 0.0),
                                          (3000, 1234, 0.9, 0.5), (1, 1, 0.0, 0.99)])
def test_rho_is_the_papers_formula(S: int, P: int, f: float, tau: float) -> None:
    k = 1 / (1 - tau)
    assert shares_per_page(S, P, f, tau) == pytest.approx(S / (P * (f + k * (1 - f))))


def test_rho_examples() -> None:
    assert shares_per_page(1000, 500, 0.2, 0.75) == pytest.approx(1000 / (500 * 3.4))
    assert shares_per_page(1000, 500, 0.2, 0.0) == pytest.approx(2.0)    # no tax: S / P
    assert shares_per_page(1000, 0, 0.5, 0.75) == float("inf")


def test_tax_reclaims_from_the_idle_vm_first() -> None:
    # 800 pages must go. rho_idle = 1000 / (P * 4), rho_active = 1000 / P: the idle VM gives
    # until 4 * P_idle = P_active, then both give in that ratio.
    t = IdleTax(0.75, chunk=1).targets([vm("active"), vm("idle", active=0.0)], available=1200)
    assert t["active"] == pytest.approx(960, abs=2) and t["idle"] == pytest.approx(240, abs=2)
    assert sum(t.values()) == 1200


def test_no_tax_splits_evenly() -> None:
    t = IdleTax(0.0, chunk=1).targets([vm("active"), vm("idle", active=0.0)], available=1200)
    assert t == {"active": 600, "idle": 600}


def test_shares_weigh_the_split() -> None:
    t = IdleTax(0.0, chunk=1).targets([vm("a", shares=2000), vm("b")], available=900)
    assert t["a"] == pytest.approx(600, abs=2) and t["b"] == pytest.approx(300, abs=2)


def test_revocation_never_goes_below_min() -> None:
    t = IdleTax(0.75, chunk=1).targets([vm("active"), vm("idle", active=0.0, min=400)], 1200)
    assert t == {"active": 800, "idle": 400}
    # every VM at its min: nothing more can be taken, even if it does not fit
    t = IdleTax(0.75).targets([vm("a", min=700), vm("b", min=700)], 1200)
    assert t == {"a": 700, "b": 700}


def test_reclaim_order_follows_rho() -> None:
    """Revoking one chunk at a time, each chunk comes from the lowest-rho VM of the moment."""
    vms = [vm("a", shares=1000, active=0.1), vm("b", shares=4000, active=0.5),
           vm("c", shares=500, active=1.0)]
    policy = IdleTax(0.75, chunk=50)
    alloc = {v.name: v.demand for v in vms}
    for available in range(2950, 1000, -50):
        lowest = min(vms, key=lambda v: policy.rho(v, alloc[v.name]))
        t = policy.targets(vms, available)
        assert t[lowest.name] == alloc[lowest.name] - 50
        assert all(t[v.name] == alloc[v.name] for v in vms if v is not lowest)
        alloc = t


def test_memory_left_over_is_spread_by_shares_up_to_max() -> None:
    t = IdleTax(0.75).targets([vm("a", shares=3000, demand=100, max=500),
                               vm("b", shares=1000, demand=100, max=5000)], available=1200)
    assert t == {"a": 500, "b": 700}


def test_share_proportional_ignores_activity() -> None:
    t = ShareProportional().targets([vm("a", shares=2000, active=0.0), vm("b", active=1.0)], 900)
    assert t == {"a": 600, "b": 300}
    # a VM that wants less than its share leaves the rest to the others
    t = ShareProportional().targets([vm("a", shares=2000, demand=100), vm("b")], 900)
    assert t == {"a": 100, "b": 800}


@pytest.mark.parametrize("tau", [-0.1, 1.0, 1.5, "0.5", True])
def test_bad_tax_rate_is_named(tau: object) -> None:
    with pytest.raises(ValueError, match="^tax_rate: must be a number in \\[0, 1\\)"):
        IdleTax(tau)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="^tax_rate: "):
        MemoryPolicy(tax_rate=tau)  # type: ignore[arg-type]


def test_bad_policy_fields_are_named() -> None:
    with pytest.raises(ValueError, match="^sample_period: "):
        MemoryPolicy(sample_period=0)
    with pytest.raises(ValueError, match="^sample_size: "):
        MemoryPolicy(sample_size=0)
    with pytest.raises(ValueError, match="^victims: expected a VictimPolicy"):
        MemoryPolicy(victims="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="^thresholds: must decrease"):
        Thresholds(high=0.02, soft=0.04)
    with pytest.raises(ValueError, match="^thresholds.low: "):
        Thresholds(low=0)


def test_states_follow_a_scripted_free_memory_curve_with_hysteresis() -> None:
    curve = [(0.10, "high"), (0.05, "high"), (0.039, "soft"), (0.03, "soft"), (0.019, "hard"),
             (0.009, "low"), (0.015, "low"), (0.025, "hard"), (0.035, "hard"), (0.045, "soft"),
             (0.055, "soft"), (0.065, "high"), (0.041, "high"), (0.005, "low"), (0.07, "hard"),
             (0.07, "soft"), (0.07, "high")]
    states = ReclaimStates()
    assert [states.update(free) for free, _ in curve] == [s for _, s in curve]


def test_states_do_not_flap_around_a_threshold() -> None:
    states = ReclaimStates()
    seen = [states.update(0.04 + d) for d in [-0.001, 0.001] * 10]
    assert seen == ["soft"] * 20


def test_thresholds_are_settable() -> None:
    states = ReclaimStates(Thresholds(high=0.5, soft=0.4, hard=0.3, low=0.2))
    assert [states.update(f) for f in (0.45, 0.35, 0.25, 0.1, 0.35, 0.45, 0.55)] == \
        ["high", "soft", "hard", "low", "hard", "soft", "high"]


def test_paper_estimator_rises_fast_and_falls_slowly() -> None:
    e = PaperEstimator(fast_gain=0.5, slow_gain=0.125)
    assert e.estimate(0, 0) == 1.0                      # nothing measured: not taxed
    for _ in range(20):
        e.period_done(20, 100)
    assert e.estimate(0, 100) == pytest.approx(0.2)
    e.period_done(80, 100)                              # the working set grew
    assert e.fast == pytest.approx(0.5) and e.slow == pytest.approx(0.275)
    assert e.estimate(0, 100) == pytest.approx(0.5)     # no touches yet: no lower bound
    assert e.current == pytest.approx(0.5)
    assert e.estimate(100, 100) == pytest.approx(0.75)  # the running period counts at once
    for _ in range(3):
        e.period_done(20, 100)                          # it shrank again: slow decay
    assert e.fast == pytest.approx(0.2375) and e.estimate(0, 100) == pytest.approx(e.slow)
    assert e.slow == pytest.approx(0.2 + 0.075 * (7 / 8) ** 3) and e.slow > e.fast


def test_last_period_estimator() -> None:
    e = LastPeriod()
    assert e.estimate(0, 0) == 1.0
    e.period_done(30, 100)
    assert e.estimate(100, 100) == pytest.approx(0.3)
    e.period_done(5, 0)                                 # nothing sampled: no information
    assert e.estimate(0, 0) == pytest.approx(0.3)
