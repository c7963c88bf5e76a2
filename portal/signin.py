"""Accepting a signed Sign-In with Ethereum message: checks in order, the nonce used up last.

Fields first (this portal's domain, URI and chain id, times), then the signature (it must recover the address the
message names), then the nonce, deleted as it is checked, so a message signed once signs in once.
"""

from datetime import UTC, datetime, timedelta

import asyncpg

from portal import nonces, siwe
from portal.errors import SignatureRefused
from portal.signing import InvalidSignature, recover_signer


async def verify_sign_in(
    pool: asyncpg.Pool, *, message: str, signature: str, domain: str, uri: str, chain_id: int, max_age: timedelta
) -> str:
    """The wallet that signed in; `SignatureRefused` (401) names what was wrong."""
    try:
        parsed = siwe.parse(message)
        siwe.check_fields(parsed, domain=domain, uri=uri, chain_id=chain_id, now=datetime.now(UTC), max_age=max_age)
    except siwe.InvalidSiweMessage as exc:
        raise SignatureRefused(str(exc), field="message") from None
    try:
        signer = recover_signer(message, signature)
    except InvalidSignature as exc:
        raise SignatureRefused(str(exc), field="signature") from None
    if signer != parsed.address:
        raise SignatureRefused(f"the message names {parsed.address} but was signed by {signer}", field="signature")
    try:
        await nonces.consume(pool, parsed.nonce, "sign-in")
    except nonces.NonceRejected as exc:
        raise SignatureRefused(str(exc), field="message") from None
    return parsed.address
