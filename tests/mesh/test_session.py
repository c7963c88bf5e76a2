"""mesh.session: what is kept of the route that served each step, which is written to Redis with every token."""

from decimal import Decimal
from types import SimpleNamespace

import pytest
import torch

from mesh.announce import public_name_for, wallet_from_public_name
from mesh.session import StepResult, served_spans
from protocol.served_steps import ServedStep
from workers.attribution import Attribution, served_step

WALLET = "0x52908400098527886E0F7030069857D2E4169EE7"
OTHER_WALLET = "0xABaBaBaBABabABabAbAbABAbABabababaBaBABaB"


def routed_through(*names: str | None) -> SimpleNamespace:
    """A Petals `InferenceSession` routed through one two-block server per name, each announcing that name."""
    server_sessions = [
        SimpleNamespace(
            span=SimpleNamespace(
                peer_id=f"Qm{index}", start=2 * index, end=2 * index + 2, server_info=SimpleNamespace(public_name=name)
            )
        )
        for index, name in enumerate(names)
    ]
    return SimpleNamespace(_server_sessions=server_sessions)


@pytest.mark.parametrize("filler", ["x", "\U0001f600"], ids=["ascii", "astral"])
def test_a_huge_public_name_costs_a_bounded_number_of_bytes_per_token_and_its_wallet_is_still_paid(
    filler: str,
) -> None:
    session = routed_through(filler * 200_000 + " far:" + WALLET, public_name_for(OTHER_WALLET, "gpu-box"))

    record = served_step(StepResult(logits=torch.zeros(1), spans=served_spans(session), tokens=1)).encode()

    assert len(record.encode()) < 4 * 1024  # what each token pushes to Redis (workers.stream); was 200 KB and more
    attribution = Attribution.earlier([ServedStep.decode(record)])  # as the request's ending reads it back
    contributions, _, _ = attribution.settle(Decimal(1), 0, wallet_from_public_name)
    assert {c.node_id: c.wallet for c in contributions} == {"Qm0": WALLET, "Qm1": OTHER_WALLET}
