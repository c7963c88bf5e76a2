"""The provider and buyer portal: its own Starlette process that reads the ledger and the swarm snapshots.

Providers connect a wallet (Sign-In with Ethereum), register their nodes' peer ids to it, see their earnings
and payouts, the swarm and where blocks are needed; buyers manage the API keys billed to their wallet. The
portal never sits on the inference path: it reads what workers and accounting wrote, and writes only node
registrations and API keys.
"""

from portal.app import create_app
from portal.settings import PortalSettings

__all__ = ["PortalSettings", "create_app"]
