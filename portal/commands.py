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
    server: uvicorn.Server | None = None

    def stopping() -> bool:
        return server is not None and server.should_exit

    config = uvicorn.Config(
        create_app(settings, stopping),
        host=settings.portal_host,
        port=settings.portal_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        lifespan="on",
    )
    # the Server itself (not uvicorn.run), so the start-up's wait for PostgreSQL sees a SIGTERM (should_exit)
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 3  # uvicorn.run's status for a start-up that failed
