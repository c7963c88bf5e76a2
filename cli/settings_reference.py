"""`far-mesh settings`: every environment variable the processes read, with its default and meaning.

Generated from the settings classes themselves, so the README's table (checked by a test) cannot drift
from what the code validates at start-up.
"""

import argparse
from typing import Any

from pydantic_settings import BaseSettings


def settings_by_process() -> tuple[tuple[str, type[BaseSettings]], ...]:
    """Where each variable is first read; one inherited by a later class is listed once, with its first.

    Imported here rather than at module level so that building the `far-mesh` parser stays cheap.
    """
    from accounting.chain_settings import DepositSettings, ReconcileSettings
    from accounting.settings import AccountingSettings
    from gateway.settings import GatewaySettings
    from mesh.settings import MeshSettings
    from payouts.settings import PayoutSettings
    from portal.settings import PortalSettings
    from protocol.settings import CommonSettings
    from schema.settings import LedgerSettings
    from verifier.settings import VerifierSettings
    from workers.settings import WorkerSettings

    return (
        ("all", CommonSettings),
        ("gateway", GatewaySettings),
        ("worker", WorkerSettings),
        ("migrate, keys, payouts", LedgerSettings),
        ("accounting", AccountingSettings),
        ("payouts, chain", PayoutSettings),
        ("deposits", DepositSettings),
        ("ledger", ReconcileSettings),
        ("portal", PortalSettings),
        ("verifier", VerifierSettings),
        ("swarm, node, models", MeshSettings),
    )


def settings_table() -> str:
    """A Markdown table: variable, processes, default, description."""
    rows = ["| variable | read by | default | meaning |", "|---|---|---|---|"]
    seen: set[str] = set()
    for processes, cls in settings_by_process():
        for name, field in cls.model_fields.items():
            if name in seen:
                continue
            seen.add(name)
            rows.append(f"| `{name.upper()}` | {processes} | {_default(field)} | {field.description or ''} |")
    return "\n".join(rows) + "\n"


def _default(field: Any) -> str:
    if field.is_required():
        return "**required**"
    value = field.get_default(call_default_factory=False)
    if field.default_factory is not None:
        return "computed"
    return "unset" if value is None else f"`{value}`"


def register(subparsers: "argparse._SubParsersAction[Any]") -> None:
    parser = subparsers.add_parser("settings", help="list every environment variable, its default and meaning")
    parser.set_defaults(handler=_print_table)


def _print_table(_args: argparse.Namespace) -> int:
    print(settings_table(), end="")
    return 0
