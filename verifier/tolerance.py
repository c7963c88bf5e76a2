"""How far a recomputed span may be from the server's answer before the server is called a cheat.

The error measured is relative, per step: the largest absolute difference over the step's positions and
hidden units, over the largest magnitude of the recomputed states. An honest server differs from the
verifier only by rounding (its kernels, its KV cache, its order of summation, and for 16-bit servers the dtype
it computes and sends in), which scales with the dtype's machine epsilon and grew like the square root of the
blocks run in our measurements; so the bound is

    tolerance = min(MAX_TOLERANCE, SAFETY[dtype] x eps(dtype) x sqrt(blocks))

where dtype is the one the server ANNOUNCED in the DHT, never the one it replied in (a server would otherwise
choose its own tolerance). Measured on the tiny models over 1,000 honest spans per dtype, 16-bit outputs
computed step by step in that dtype as a 16-bit server computes them (docs/verification.md): honest spans reach
at most 25 x eps x sqrt(blocks) in float32 and 12.6 x eps x sqrt(blocks) in float16 and bfloat16, so SAFETY
leaves a margin of 10x over the worst seen. For bfloat16 the cap decides (a margin of 4x to 5x at 1 to 6
blocks): half the states' magnitude off is no rounding, which still catches a server that skips its blocks
(error ~1) but not one whose weights are off by 1% (docs say more).
"""

import math
from typing import Final

MACHINE_EPSILON: Final = {"float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}
"""Spacing of floats just above 1.0 for each dtype hidden states may travel in."""

SAFETY: Final = {"float32": 256.0, "float16": 128.0, "bfloat16": 128.0}
"""Per dtype, the multiple of eps x sqrt(blocks) allowed: 10x the worst honest error measured (25 in float32, 12.6
in float16 and bfloat16; `tests/verifier/test_recompute.py` measures it again on 1,000 spans per dtype)."""

MAX_TOLERANCE: Final = 0.5
"""No honest rounding moves states by half their magnitude; skipping the blocks moves them by about 1."""


def tolerance_for(dtype: str, blocks: int) -> float:
    """The largest relative error an honest span of `blocks` blocks is allowed, for a server that announced it
    computes in `dtype`."""
    if dtype not in MACHINE_EPSILON:
        raise ValueError(f"no tolerance for hidden states in {dtype}; expected one of {sorted(MACHINE_EPSILON)}")
    if blocks < 1:
        raise ValueError("a span holds at least one block")
    return min(MAX_TOLERANCE, SAFETY[dtype] * MACHINE_EPSILON[dtype] * math.sqrt(blocks))
