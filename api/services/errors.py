"""What a service refuses, in the product's terms. Each error has its HTTP status
and stable ``code`` here, and ``api.errors.service_error`` turns every one into the
same problem+json body (the web UI's pages into an error page or the form's
fields): a service never builds a response.

``problems`` lists the single fields at fault in pydantic's shape (``loc``, ``msg``,
``type`` and, where it may be echoed, ``input``), so that they become the body's
``details`` exactly as a validation error of the request's schema does; ``loc``
starts with where the field is (``body``, ``query``, ``path``, ``header``)."""

from __future__ import annotations

from typing import Any, ClassVar


class ServiceError(Exception):
    """A refusal: ``message`` is one human sentence (None: said by ``problems``)."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "validation_error"

    def __init__(self, message: str | None = None, problems: list[dict[str, Any]] | None = None,
                 retry_after_s: int | None = None):
        super().__init__(message or "; ".join(str(problem.get("msg", "")) for problem in problems or []))
        self.message, self.problems, self.retry_after_s = message, list(problems or []), retry_after_s


class Invalid(ServiceError):
    """A value the service cannot accept, beyond what its schema checks (422)."""

    status, code = 422, "validation_error"

    def __init__(self, problems: list[dict[str, Any]], message: str | None = None):
        super().__init__(message, problems)


class NotFound(ServiceError):
    """No such thing, or none this user may see (404: others' ids are not disclosed)."""

    status, code = 404, "not_found"


class Forbidden(ServiceError):
    """The user may see it but not do this (403)."""

    status, code = 403, "forbidden"


class Conflict(ServiceError):
    """Not in the thing's current state (409)."""

    status, code = 409, "conflict"


class LimitReached(ServiceError):
    """A cap of this user or server is reached; ``retry_after_s`` says when to try again (429)."""

    status, code = 429, "quota_exceeded"

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message, retry_after_s=retry_after_s)


class TooLarge(ServiceError):
    """A body over what the server takes (413)."""

    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    """A body that is not of a format the route reads (415)."""

    status, code = 415, "unsupported_media_type"
