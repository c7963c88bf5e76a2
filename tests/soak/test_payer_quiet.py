"""The soak's chain checks reconcile only once the payer is stopped with nothing in flight: a payer left running
claims and sends another batch after "no payout batch stuck" passed, and the reconciliation then finds the chain
and the journal that batch apart (the first 30-minute soak did, docs/soak.md)."""

from dataclasses import dataclass, field

from devstack.harness.soak.checks import Check
from devstack.harness.soak.payer_quiet import ChainSteps, chain_checks


@dataclass
class ScriptedPayer:
    """A payer that, while it runs, has always just sent its next batch (mined, not yet marked paid)."""

    running: bool = True
    in_flight: int = 1
    calls: list[str] = field(default_factory=list)

    async def settled(self) -> Check:
        self.calls.append("settled")
        self.in_flight = 0  # it settles what it took ...
        if self.running:
            self.in_flight = 1  # ... and, still running, claims and sends the next
        return Check("no payout batch stuck", True, "")

    async def stop(self) -> None:
        self.calls.append("stop")
        self.running = False  # the batch in flight stays there, cut short

    async def finish(self) -> Check:
        self.calls.append("finish")
        if not self.running:
            self.in_flight = 0
        return Check("the payer stopped with no batch in flight", self.in_flight == 0, "")

    async def reconcile(self) -> Check:
        self.calls.append("reconcile")
        quiet = not self.running and self.in_flight == 0
        return Check("the books reconcile on chain", quiet, f"running={self.running} in_flight={self.in_flight}")

    def steps(self) -> ChainSteps:
        return ChainSteps(self.settled, self.stop, self.finish, self.reconcile)


async def test_the_chain_is_reconciled_only_after_the_payer_stopped_and_finished_what_it_had_in_flight() -> None:
    payer = ScriptedPayer()
    results = await chain_checks(payer.steps())
    assert payer.calls == ["settled", "stop", "finish", "reconcile"]
    assert [c.passed for c in results] == [True, True, True], [c.line() for c in results]
