"""The portal's errors: each one a clear 4xx with a code, a message and (when one is to blame) the field.

Pages show the message; JSON routes answer `{"error": {"code", "message", "field"}}`, the gateway's shape.
"""


class PortalError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def body(self) -> dict[str, object]:
        error: dict[str, object] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}


class BadInput(PortalError):
    status = 422
    code = "invalid"


class SignatureRefused(PortalError):
    """A signed message that is malformed, for another domain or chain, stale, replayed, or signed by someone else."""

    status = 401
    code = "signature_refused"


class NotSignedIn(PortalError):
    status = 401
    code = "not_signed_in"


class CsrfRefused(PortalError):
    status = 403
    code = "csrf_refused"


class Forbidden(PortalError):
    status = 403
    code = "forbidden"


class NotFound(PortalError):
    status = 404
    code = "not_found"


class Conflict(PortalError):
    status = 409
    code = "conflict"


class TooMany(PortalError):
    status = 429
    code = "too_many_requests"


class Unavailable(PortalError):
    status = 503
    code = "unavailable"
