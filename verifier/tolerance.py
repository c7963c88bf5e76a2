"""How far a recomputed span may be from the server's answer before the server is called a cheat.

The error measured is relative, per step: the largest absolute difference over the step's positions and
hidden units, over the largest magnitude of the recomputed states. An honest server differs from the
verifier only by floating-point rounding (its kernels, its KV cache, the order it sums in), which grows with
the dtype's machine epsilon and with the number of blocks it ran; so the bound is

    tolerance = SAFETY x eps(dtype) x blocks

SAFETY was chosen against measurements (docs/verification.md): honest float32 spans of the tiny models
stayed below 1/100 of it over 1,000 verifications, while a server with weights perturbed by 1% or one that
returns its inputs unchanged lands orders of magnitude above it.
"""

from typing import Final

MACHINE_EPSILON: Final = {"float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}
"""Spacing of floats just above 1.0 for each dtype hidden states may travel in."""

SAFETY: Final = 2048.0
"""Multiple of eps x blocks that an honest span never reaches (measured margin: docs/verification.md)."""


def tolerance_for(dtype: str, blocks: int) -> float:
    """The largest relative error an honest span of `blocks` blocks is allowed, for states in `dtype`."""
    if dtype not in MACHINE_EPSILON:
        raise ValueError(f"no tolerance for hidden states in {dtype}; expected one of {sorted(MACHINE_EPSILON)}")
    if blocks < 1:
        raise ValueError("a span holds at least one block")
    return SAFETY * MACHINE_EPSILON[dtype] * blocks
