"""The body of POST /inference/generate, field for field as the seed's API defines it, with limits.

These are hard ceilings every process agrees on; the gateway may apply tighter, configured caps
(prompt length, max_tokens) on top.
"""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from protocol.catalog import ModelId
from protocol.wallet import Wallet

MAX_PROMPT_CHARS = 32_000
MAX_NEW_TOKENS = 4096
REQUEST_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
RequestId = Annotated[str, Field(pattern=REQUEST_ID_PATTERN, description="1-64 characters: letters, digits, _ . : -")]


class GenerateRequest(BaseModel):
    """A client's generation request; unknown fields are rejected so a misspelt option never goes unnoticed."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="Text the model continues")
    max_tokens: int = Field(default=256, ge=1, le=MAX_NEW_TOKENS, description="Most tokens to generate")
    temperature: float = Field(default=0.7, ge=0.0, le=2.0, allow_inf_nan=False, description="0 means greedy")
    top_p: float = Field(default=0.9, gt=0.0, le=1.0, allow_inf_nan=False, description="Nucleus sampling mass")
    user_wallet: Wallet | None = Field(default=None, description="EIP-55 address billed; must match the API key's")
    request_id: RequestId | None = Field(default=None, description="Idempotency key; generated when absent")
    model_id: ModelId | None = Field(default=None, description="Defaults to DEFAULT_MODEL_ID")
