"""What every portal request handler shares: settings, the ledger pool, Redis, the session codec, templates."""

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis
from starlette.templating import Jinja2Templates

from portal import siwe
from portal.auth import SessionCodec
from portal.message_limits import MessageLimits
from portal.registrations import Binding
from portal.settings import PortalSettings

TEMPLATES_DIR = Path(__file__).with_name("templates")
STATIC_DIR = Path(__file__).with_name("static")


@dataclass
class PortalState:
    settings: PortalSettings
    sessions: SessionCodec
    templates: Jinja2Templates
    pool: asyncpg.Pool | None = None
    redis: aioredis.Redis | None = None

    @property
    def binding(self) -> Binding:
        return Binding(
            domain=self.settings.portal_domain,
            chain_id=self.settings.portal_chain_id,
            max_age=timedelta(seconds=self.settings.portal_nonce_ttl_s),
        )

    @property
    def message_limits(self) -> MessageLimits:
        return MessageLimits(
            per_client=self.settings.portal_messages_per_client,
            per_address=self.settings.portal_messages_per_address,
            window_s=self.settings.portal_nonce_ttl_s,
        )

    @property
    def sign_in_uri(self) -> str:
        """The URI line of every sign-in message: written by the portal, and checked when the message returns."""
        return siwe.portal_uri(self.settings.portal_domain, secure=self.settings.portal_secure_cookies)

    @property
    def db(self) -> asyncpg.Pool:
        assert self.pool is not None, "the portal's lifespan has not started"
        return self.pool

    @property
    def swarm(self) -> aioredis.Redis:
        assert self.redis is not None, "the portal's lifespan has not started"
        return self.redis
