"""The chaos soak (issue #29): the whole system under a steady mix of buyers while a seeded random schedule kills
and restarts its processes and restarts Redis and PostgreSQL, then checkers over what the clients received and
what the ledger billed.

Where faults meet is where money is lost or paid twice, and single-fault tests never get there. The pieces:
`schedule` (the seeded, printable, replayable fault schedule), `faults` (injecting one fault and putting it back),
`buyers` (the clients and what each request ended with), `checks` (the invariants, each with its numbers) and
`run` (all of it in order). `bench/soak.py` is the command; `tests/soak/` runs the short soak on request.
"""
