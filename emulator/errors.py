"""The one error body shape of every emulated route (the spec's BadRequestDTO, UnauthorizedDTO, ...)."""

from __future__ import annotations

from typing import Any

_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 422: "Unprocessable Entity",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


def error_body(status: int, message: str | list[str]) -> dict[str, Any]:
    """Shaped like the spec's BadRequestDTO / UnauthorizedDTO / UnprocessableDTO (NestJS errors)."""
    if status == 422 and isinstance(message, str):
        message = [message]
    return {"statusCode": status, "message": message, "error": _REASONS.get(status, "Error")}
