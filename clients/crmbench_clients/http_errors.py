"""The server side of the error format: FastAPI handlers that render a service's typed
errors (crmbench_contracts.api_errors.ApiError) and refused requests as JSON bodies,
shared by the verifier and the agent runner."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from crmbench_contracts.api_errors import (
    ApiError,
    RequestProblem,
    routing_problem,
    validation_problem,
)


def error_response(error: ApiError[Any]) -> JSONResponse:
    """The JSON response of a service error: its status and {"error": {...}} body."""
    return JSONResponse(
        status_code=error.status_code, content=error.to_response().model_dump(mode="json")
    )


def install_error_handlers(
    app: FastAPI, refused: Callable[[RequestProblem], ApiError[Any]]
) -> None:
    """Renders every ApiError as its JSON body, and a refused request (FastAPI's
    validation, no route, wrong method, unreadable body) as the error `refused` makes of
    its RequestProblem. Service-specific handlers are added after this."""

    @app.exception_handler(ApiError)
    async def service_error(request: Request, exc: ApiError[Any]) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(refused(validation_problem(list(exc.errors()))))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        problem = routing_problem(exc.status_code, exc.detail, request.method, request.url.path)
        return error_response(refused(problem))
