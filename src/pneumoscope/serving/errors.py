"""Every error the service answers is JSON: {"status": "error", "error", "request_id"}."""

from __future__ import annotations

import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    """An answer other than 200, with one clear message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def request_id(request: Request) -> str:
    """The id of this request (made by the middleware; made here when it did not run)."""
    state = request.scope.setdefault("state", {})
    return state.setdefault("request_id", uuid.uuid4().hex)


def error_response(
    request: Request,
    status: int,
    message: str,
    headers: dict | None = None,
    extra: dict | None = None,
) -> JSONResponse:
    """The JSON error body; ``extra`` adds fields (a refused film's outcome and estimate)."""
    body = {"status": "error", "error": message, "request_id": request_id(request)}
    return JSONResponse(body | (extra or {}), status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("query", "body"))
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return "bad parameters: " + "; ".join(parts)


def install_handlers(app: FastAPI) -> None:
    """JSON errors for ours, FastAPI's (422) and Starlette's (404, 405); the unexpected
    are answered by ``middleware.ErrorBoundary``."""

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError):
        return error_response(request, exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return error_response(request, 422, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return error_response(request, exc.status_code, str(exc.detail), exc.headers)
