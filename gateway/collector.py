"""Garbage-collector settings for the gateway process: it holds thousands of streams open for minutes, and the
garbage it makes relaying their tokens is almost never cyclic.

A relay reader's reply allocates hundreds of containers at once (its lists, each entry, the batches handed to
each client), so CPython's default threshold (a young collection every 700 net allocations) collected in the
middle of nearly every reply, each time walking everything not yet promoted: about a quarter of the gateway's CPU
at 3,000 streams, found by py-spy in the parsing of Redis replies and in the relay's smallest allocations
(bench/bench_gateway_relay.py, docs/performance.md). Reference counting frees the tokens' garbage; the collector
only has to find rare cycles, so it runs less often and never walks what existed at start-up (the app, its
modules and settings: frozen, as `gc.freeze` intends for long-lived processes).
"""

import gc

YOUNG_THRESHOLD = 50_000
"""Net container allocations between young-generation collections (CPython's default: 700)."""


def tune_for_streams() -> None:
    """Freeze what exists now and collect the young generation less often; call once, before serving."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
