"""What the tests and the benchmarks both use to start the system and drive it as a client would.

`bench/` may not import `tests/` (pyproject's import contracts), and `tests/fixtures` wraps these in pytest
fixtures; both import them from here. Nothing here imports pytest, and nothing on a production path imports this
package: it needs the `dev` extra (httpx, eth-account's test wallets).
"""
