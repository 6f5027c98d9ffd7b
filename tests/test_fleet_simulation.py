"""The month's simulation (tests/bench/sim_fleet_month.py) at a small scale: the real policy and the real budget
core on a simulated clock never let through an order Let's Encrypt's buckets would refuse, and no certificate
expires while it waits."""

from __future__ import annotations

import argparse

import pytest

from tests.bench.sim_fleet_month import Simulation


@pytest.mark.parametrize("per_domain", [10, 100], ids=["domains-roomy", "one-registered-domain"])
def test_the_budget_holds_the_cas_buckets_through_a_rollout_and_steady_state(
    per_domain: int, capsys: pytest.CaptureFixture[str]
) -> None:
    args = argparse.Namespace(nodes=10, certs=100, share=3, days=10, lifetime_days=6, per_domain=per_domain,
                              orders_per_3h=5, check_every=50)
    simulation = Simulation(args)
    simulation.run()
    simulation.report(0.0)  # asserts: the CA refuses nothing, 3 h peaks within the bucket, 1 order per renewal
    assert simulation.ca.refused == 0 and not simulation.expired
    assert simulation.ledger.checked  # the bisection was checked against the core with every waiting row
    assert len(simulation.orders) > args.certs  # every certificate issued, then renewed
    assert "orders the CA would refuse: 0" in capsys.readouterr().out
