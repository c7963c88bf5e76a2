"""Garbage-collector settings for the consumer process: its work makes garbage fast, and almost none of it cyclic.

A batch of usage records allocates tens of thousands of container objects (models, rows, tuples) that live until
the batch is written, so CPython's default threshold (a collection every 700 net allocations) collected dozens
of times per batch, each time walking everything older, and took about 40% of the consumer's CPU. Reference
counting frees the batches; the collector only has to find rare cycles, so it runs less often and never walks
what existed at start-up (modules, settings: frozen, as `gc.freeze` intends for long-lived processes).
"""

import gc

YOUNG_THRESHOLD = 50_000
"""Net container allocations between young-generation collections (CPython's default: 700)."""


def tune_for_batches() -> None:
    """Freeze what exists now and collect the young generation less often; call once, after start-up."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
