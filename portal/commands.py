"""`far-mesh portal` serves the provider and buyer portal (PORTAL_HOST:PORTAL_PORT).

uvicorn and the app are imported inside the handler so `far-mesh --help` stays light.
"""

import argparse


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    portal = subparsers.add_parser("portal", help="serve the provider and buyer portal (PORTAL_HOST:PORTAL_PORT)")
    portal.set_defaults(handler=serve)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from portal.app import create_app
    from portal.settings import PortalSettings

    settings = PortalSettings.from_env()
    settings.configure_logging()
    uvicorn.run(
        create_app(settings),
        host=settings.portal_host,
        port=settings.portal_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        lifespan="on",
    )
    return 0
