"""Kubernetes `Status` error bodies and the exception that carries one to the HTTP layer.

kubectl prints `Error from server (<reason>): <message>` from these, so reasons and messages
follow the real apiserver's wording (`pods "x" not found`).
"""

from __future__ import annotations

from typing import Any


def status_body(*, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def success_body(*, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
    if details:
        body["details"] = details
    return body


class ApiError(Exception):
    """An error the server answers with a Status of that code and reason."""

    def __init__(self, *, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return status_body(code=self.code, reason=self.reason, message=self.message, details=self.details)


def bad_request(message: str) -> ApiError:
    return ApiError(code=400, reason="BadRequest", message=message)


def invalid(message: str, *, details: dict[str, Any] | None = None) -> ApiError:
    return ApiError(code=422, reason="Invalid", message=message, details=details)


def method_not_allowed() -> ApiError:
    return ApiError(code=405, reason="MethodNotAllowed", message="the server does not allow this method on the requested resource")


def not_found_path() -> ApiError:
    return ApiError(code=404, reason="NotFound", message="the server could not find the requested resource")


UNAUTHORIZED = status_body(code=401, reason="Unauthorized", message="Unauthorized")
UNAUTHORIZED.pop("metadata")
