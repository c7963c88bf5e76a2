"""Who is asking: the API key in `Authorization: Bearer <key>`, checked against the key store."""

from starlette.requests import Request

from gateway.api_keys import ApiKey
from gateway.errors import Unauthorized
from gateway.state import state_of


async def authenticate(request: Request) -> ApiKey:
    """The caller's active API key; 401 when the header is missing, malformed, unknown or revoked."""
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("missing Authorization header; send `Authorization: Bearer <api key>`")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthorized("Authorization must be `Bearer <api key>`")
    key = await state_of(request).key_store.verify(presented.strip())
    if key is None:
        raise Unauthorized("invalid or revoked API key; create one with `far-mesh keys create --wallet 0x...`")
    return key
