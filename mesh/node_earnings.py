"""What a running node has earned, told by the portal's public JSON: the lines `far-mesh node --portal-url` prints.

The node launcher cannot see the ledger; the portal publishes each node's earnings at
`/api/nodes/<peer id>/earnings` (tokens served, FAR earned, paid, in payment, unpaid, and the wallet the node is
registered to). With `--portal-url`, the launcher prints where to register the node, then one line every few
minutes (`mesh.node_keeper` runs the server). Only the standard library is used: the node image stays as it is.
"""

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


def earnings_url(portal_url: str, peer_id: str) -> str:
    return f"{portal_url.rstrip('/')}/api/nodes/{urllib.parse.quote(peer_id, safe='')}/earnings"


def registration_url(portal_url: str, peer_id: str) -> str:
    return f"{portal_url.rstrip('/')}/register?node_id={urllib.parse.quote(peer_id, safe='')}"


def fetch_earnings(portal_url: str, peer_id: str, timeout_s: float = 10.0) -> dict[str, Any] | None:
    """The portal's document for `peer_id`, or None when it did not answer with one (said, never raised)."""
    try:
        with urllib.request.urlopen(earnings_url(portal_url, peer_id), timeout=timeout_s) as response:
            document = json.loads(response.read())
    except (OSError, ValueError):  # URLError and timeouts are OSErrors; a body that is not JSON a ValueError
        return None
    return document if isinstance(document, dict) else None


def earnings_line(document: dict[str, Any] | None, *, portal_url: str, peer_id: str) -> str:
    """One line: tokens served and FAR earned, paid, in payment and unpaid; or why there is nothing to say."""
    if document is None:
        return f"far-mesh node: the portal at {portal_url} did not answer; earnings unknown for now"
    totals = document.get("totals", {})
    line = (
        f"far-mesh node: tokens served {totals.get('tokens_contributed', 0)}, "
        f"earned {totals.get('earned_far', '0')} FAR (paid {totals.get('paid_far', '0')}, "
        f"in payment {totals.get('in_payment_far', '0')}, unpaid {totals.get('unpaid_far', '0')})"
    )
    wallet = document.get("registered_wallet")
    if wallet:
        return f"{line}; paid to {wallet}"
    return f"{line}; not registered, so held: register at {registration_url(portal_url, peer_id)}"


def status_line(portal_url: str, peer_id: str, restarts: int) -> str:
    """The launcher's periodic line: the node's earnings, and how often its server was restarted, if ever."""
    line = earnings_line(fetch_earnings(portal_url, peer_id), portal_url=portal_url, peer_id=peer_id)
    return f"{line}; restarts {restarts}" if restarts else line
