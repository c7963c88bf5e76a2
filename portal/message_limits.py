"""How many messages to sign (sign-in messages, node statements) one client may ask for: the nonce table's guard.

Asking for a message is unauthenticated, and each one holds a row of `far_portal_nonces` until it is used or
expires; the table is capped (`nonces.MAX_PENDING`) so a flood cannot grow it without bound. Without these
limits one client could hold the whole cap and lock every wallet out of signing in and registering. Each client
network (an IPv4 address; an IPv6 /64, which one host can cycle through freely) may ask for
PORTAL_MESSAGES_PER_CLIENT messages per PORTAL_NONCE_TTL_S window, and for PORTAL_MESSAGES_PER_ADDRESS of them
naming one wallet. The per-address count is kept per client: counted per address alone, anyone could use up a
chosen wallet's allowance and lock that wallet out. Filling the cap now takes MAX_PENDING / PER_CLIENT distinct
networks at once.

Counters are fixed windows in Redis, checked and taken in one Lua script, so concurrent requests cannot together
pass a limit. The portal sees the client address its server reports: behind a reverse proxy, run uvicorn with
`--forwarded-allow-ips` set to the proxy, or every client counts as the proxy.
"""

import ipaddress
from dataclasses import dataclass
from typing import Final

import redis.asyncio as aioredis

from portal.errors import TooMany
from protocol import keys

TAKE: Final = """
-- KEYS: the client's counter, the client's counter for the address. ARGV: client limit, address limit, window ms.
-- Returns {1} taken, or {0, ms until the full counter's window ends, 'client'|'address'}.
local limits = {tonumber(ARGV[1]), tonumber(ARGV[2])}
local names = {'client', 'address'}
for i = 1, 2 do
  if tonumber(redis.call('GET', KEYS[i]) or '0') >= limits[i] then
    return {0, redis.call('PTTL', KEYS[i]), names[i]}
  end
end
for i = 1, 2 do
  if redis.call('INCR', KEYS[i]) == 1 then
    redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[3]))
  end
end
return {1}
"""


class TooManyMessages(TooMany):
    """429: this client asked for more messages to sign than its window allows; `retry_after_s` says when to."""

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def client_network(host: str | None) -> str:
    """The unit a client is counted by: its IPv4 address, or the /64 of its IPv6 address (one subscriber's)."""
    if host is None:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]  # a test client or a Unix socket: counted by its name
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass(frozen=True)
class MessageLimits:
    per_client: int
    per_address: int
    window_s: float

    async def take(self, redis: aioredis.Redis, host: str | None, address: str) -> None:
        """Count one message for `address` to the client at `host`; `TooManyMessages` (429) past a limit."""
        network = client_network(host)
        counters = [keys.portal_messages_by_client(network), keys.portal_messages_for_address(address, network)]
        args = [str(self.per_client), str(self.per_address), str(int(self.window_s * 1000))]
        result = await redis.eval(TAKE, len(counters), *counters, *args)  # type: ignore[misc]
        if int(result[0]) == 1:
            return
        retry_after_s = max(1, -(-int(result[1]) // 1000))
        which = str(result[2].decode() if isinstance(result[2], bytes) else result[2])
        limit = (
            f"{self.per_client} messages to sign per client"
            if which == "client"
            else f"{self.per_address} messages to sign for {address} per client"
        )
        raise TooManyMessages(
            f"this client asked for more than {limit} in {self.window_s:g} s; try again in {retry_after_s} s",
            retry_after_s=retry_after_s,
        )
