"""Who served a session, and how much: the basis of every node's payment.

A node's work is the sum over steps of (blocks it served in that step x tokens that step processed); the
prefill step processes the whole prompt, and a re-prefill after failover or recovery is work the new route
really did, so it counts too. The platform's fee is taken from the session's cost, and the rest is split in
proportion to work (`money.split_with_fee`). A job priced with per-block premiums (docs/pricing.md) weighs each
block-token by its block's premium instead, so the providers of under-served blocks take more of the same pool;
each contribution then records that weighted work (`paid_work_units`), from which its payment is reproducible.

A run that takes a request over (its worker died) starts from the steps earlier runs wrote tokens for, read from
beside the stream (`protocol.served_steps`, `Attribution.earlier`), then adds its own, its re-prefill included:
each step is counted by the one run that ran it, once, and only steps whose token is billed survive a run.
"""

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from mesh.session import ServedSpan, StepResult
from protocol.money import split_with_fee
from protocol.pricing import PREMIUM_BASE_BPS
from protocol.served_steps import ServedStep, StepSpan
from protocol.usage import NodeContribution


@dataclass
class _NodeWork:
    blocks: set[int] = field(default_factory=set)
    tokens: int = 0
    work_units: int = 0
    public_name: str | None = None
    block_tokens: Counter[int] = field(default_factory=Counter)
    """Tokens per block this node processed: its work, block by block, for the per-block premiums."""

    def paid_work_units(self, premium_bps: Sequence[int]) -> int:
        """Work weighed by each block's premium in basis points (a block past the premiums' end at par)."""
        return sum(
            tokens * (premium_bps[block] if block < len(premium_bps) else PREMIUM_BASE_BPS)
            for block, tokens in self.block_tokens.items()
        )


class Attribution:
    """Accumulates the spans that served each step of one request (across fresh sessions too)."""

    def __init__(self) -> None:
        self._nodes: dict[str, _NodeWork] = {}

    @classmethod
    def earlier(cls, steps: Iterable[ServedStep]) -> "Attribution":
        """The work of earlier runs of a request: the steps whose tokens they wrote to its stream."""
        attribution = cls()
        for step in steps:
            attribution.record_step(step.spans, step.tokens)
        return attribution

    def record_step(self, spans: Iterable[ServedSpan | StepSpan], tokens: int) -> None:
        for span in spans:
            node = self._nodes.setdefault(span.peer_id, _NodeWork())
            node.blocks.update(range(span.start_block, span.end_block))
            node.tokens += tokens
            node.work_units += (span.end_block - span.start_block) * tokens
            for block in range(span.start_block, span.end_block):
                node.block_tokens[block] += tokens
            node.public_name = span.public_name or node.public_name

    @property
    def node_ids(self) -> list[str]:
        return list(self._nodes)

    @property
    def total_work_units(self) -> int:
        return sum(node.work_units for node in self._nodes.values())

    def apportion(
        self, cost_far: Decimal, wallet_of: Callable[[str | None], str | None]
    ) -> tuple[tuple[NodeContribution, ...], Decimal]:
        """Each node's contribution with its payment, and the platform's rounding remainder (no fee)."""
        contributions, _, remainder = self.settle(cost_far, 0, wallet_of)
        return contributions, remainder

    def settle(
        self,
        cost_far: Decimal,
        fee_bps: int,
        wallet_of: Callable[[str | None], str | None],
        premium_bps: Sequence[int] = (),
    ) -> tuple[tuple[NodeContribution, ...], Decimal, Decimal]:
        """Each node's contribution with its payment, the platform's fee, and its rounding remainder; with
        `premium_bps` (the job's), shares follow work weighed by each block's premium."""
        paid = {peer: node.paid_work_units(premium_bps) for peer, node in self._nodes.items()} if premium_bps else {}
        work = paid or {peer: node.work_units for peer, node in self._nodes.items()}
        payments, fee, remainder = split_with_fee(cost_far, work, fee_bps)
        contributions = tuple(
            NodeContribution(
                node_id=peer,
                wallet=wallet_of(node.public_name),
                blocks_served=len(node.blocks),
                tokens_contributed=node.tokens,
                work_units=node.work_units,
                paid_work_units=paid.get(peer),
                payment_far=payments[peer],
            )
            for peer, node in self._nodes.items()
        )
        return contributions, fee, remainder


def served_step(result: StepResult) -> ServedStep:
    """`result`'s route and positions as the record written beside the stream with the token it made."""
    spans = tuple(StepSpan(s.peer_id, s.start_block, s.end_block, s.public_name) for s in result.spans)
    return ServedStep(tokens=result.tokens, spans=spans)
