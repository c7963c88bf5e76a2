"""Who is asking: the API key in `Authorization: Bearer <key>`, checked against the key store."""

from starlette.requests import Request

from gateway.api_keys import ApiKey
from gateway.budget_admission import check_not_expired
from gateway.errors import Unauthorized
from gateway.state import state_of


async def authenticate(request: Request) -> ApiKey:
    """The caller's active API key; 401 when the header is missing, malformed, unknown, revoked or expired (an
    expired key reads and uploads nothing either)."""
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("missing Authorization header; send `Authorization: Bearer <api key>`")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthorized("Authorization must be `Bearer <api key>`")
    key = await state_of(request).key_store.verify(presented.strip())
    if key is None:
        raise Unauthorized("invalid or revoked API key; create one with `far-mesh keys create --wallet 0x...`")
    check_not_expired(key)
    return key
