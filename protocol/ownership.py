"""Who a request id belongs to: the value of `keys.request_owner(request_id)`, written and read in one place.

The gateway writes it when a request starts; the worker that runs the request refreshes it (and restores it if
Redis lost it) with every write to the token stream, so ownership always outlives the stream it guards.
"""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RequestOwner:
    """The API key that submitted a request, and the model the request runs on."""

    api_key_id: str
    model_id: str

    def encode(self) -> str:
        return f"{self.api_key_id} {self.model_id}"

    @classmethod
    def decode(cls, value: str | bytes) -> "RequestOwner":
        text = value.decode() if isinstance(value, bytes) else value
        api_key_id, _, model_id = text.partition(" ")
        return cls(api_key_id, model_id)
