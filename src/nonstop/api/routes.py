"""ASGI app factory and routes of the JSON API.

Every failure the client can cause is a 4xx with `{"error": "..."}`; probes are open, the
rest takes `Authorization: Bearer $NONSTOP_API_TOKEN` when a token is configured.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nonstop.app import Runtime
from nonstop.errors import (
    InvalidInput,
    InvalidState,
    NonstopError,
    RunNotFound,
    StoreError,
    UnknownAgent,
)
from nonstop.models import PAUSED_BY_REQUEST, RunStatus
from nonstop.views import load_detail, run_dict

_OPEN_PATHS = ("/healthz/", "/openapi.json")
_MAX_LIMIT = 100_000


@dataclass(slots=True)
class NodeState:
    """What the probes report, kept up to date by the node."""

    started: bool = False  # migrations applied, agents validated, orphans recovered
    draining: bool = False  # shutting down: no new work
    live_within: float = 10.0  # seconds the executor loop may go without ticking
    ping_timeout: float = 2.0  # seconds the store may take to answer the readiness probe


class _ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _Guard(BaseHTTPMiddleware):
    """Refuses paths with control characters (no run id has them, and `$` in a route
    pattern would match before a trailing newline) and checks the bearer token."""

    def __init__(self, app: Any, token: str | None) -> None:
        super().__init__(app)
        self._token = None if token is None else token.encode()

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        path = request.url.path
        if any(ord(c) < 32 or ord(c) == 127 for c in request.scope["path"]):
            return _error(404, "not found")
        if self._token and not path.startswith(_OPEN_PATHS):
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            # header values arrive as latin-1 text; compare bytes, never raise on them
            presented = given.strip().encode("latin-1", "replace")
            if scheme.lower() != "bearer" or not hmac.compare_digest(presented, self._token):
                response = _error(401, "missing or wrong bearer token")
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
        return await call_next(request)


def create_api(runtime: Runtime, state: NodeState, token: str | None = None) -> Starlette:
    """The ASGI app of one node, over its runtime (store and executor)."""
    store = runtime.store
    app = runtime.app

    async def body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if not raw:
            return {}
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise _ApiError(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise _ApiError(400, "request body must be a JSON object")
        return data

    async def start_run(request: Request) -> Response:
        data = await body(request)
        agent = data.get("agent")
        if not isinstance(agent, str):
            raise _ApiError(422, "field 'agent' (a string) is required")
        # an id in the body wins over the header; a present but empty id is an error
        run_id = data.get("id")
        if run_id is None:
            run_id = request.headers.get("idempotency-key")
        run, created = await runtime.start_run(agent, data.get("input"), run_id)
        view = {
            "run_id": run.id,
            "status": str(run.status),
            "created": created,
            "url": f"/api/runs/{quote(run.id, safe='')}",
        }
        return JSONResponse(view, status_code=202 if created else 200)

    async def list_runs(request: Request) -> Response:
        status_text = request.query_params.get("status")
        try:
            status = RunStatus(status_text) if status_text else None
        except ValueError:
            raise _ApiError(400, f"unknown status {status_text!r}") from None
        limit = _int_param(request, "limit", 50)
        found = await store.list_runs(
            agent=request.query_params.get("agent") or None, status=status, limit=limit
        )
        now = time.time()
        return JSONResponse([run_dict(r, now) for r in found])

    async def get_run(request: Request) -> Response:
        return JSONResponse(await load_detail(store, request.path_params["run_id"]))

    async def cancel_run(request: Request) -> Response:
        run = await store.request_cancel(request.path_params["run_id"], time.time())
        return JSONResponse(run_dict(run, time.time()))

    async def pause_run(request: Request) -> Response:
        run = await store.request_pause(
            request.path_params["run_id"], PAUSED_BY_REQUEST, time.time()
        )
        return JSONResponse(run_dict(run, time.time()))

    async def resume_run(request: Request) -> Response:
        run = await store.resume_run(request.path_params["run_id"], time.time())
        return JSONResponse(run_dict(run, time.time()))

    async def signal_run(request: Request) -> Response:
        raw = await request.body()
        try:
            data = json.loads(raw) if raw else None
        except (ValueError, RecursionError) as exc:
            raise _ApiError(400, f"request body is not valid JSON: {exc}") from None
        run = await runtime.signal(request.path_params["run_id"], request.path_params["name"], data)
        return JSONResponse({**run_dict(run, time.time()), "signal": request.path_params["name"]})

    async def emit_event(request: Request) -> Response:
        data = await body(request)
        event_id = request.headers.get("idempotency-key")
        chosen, created = await runtime.emit(request.path_params["topic"], data, event_id)
        return JSONResponse(
            {"event_id": chosen, "topic": request.path_params["topic"], "created": created},
            status_code=202 if created else 200,
        )

    async def list_dlq(request: Request) -> Response:
        limit = _int_param(request, "limit", 50)
        found = await store.list_runs(status=RunStatus.DEAD, limit=limit)
        now = time.time()
        return JSONResponse([run_dict(r, now) for r in found])

    async def replay_dlq(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        replayed = await store.replay_dead(run_id, time.time())
        if not replayed:
            raise _ApiError(409, f"run {run_id} is not dead: only dead runs can be replayed")
        return JSONResponse(run_dict(replayed[0], time.time()))

    async def list_agents(request: Request) -> Response:
        return JSONResponse(
            [
                {
                    "name": a.name,
                    "kind": "async" if a.is_async else "sync",
                    "timeout": a.timeout,
                    "retry": {"max_attempts": a.retry.max_attempts},
                    "tools": list(a.tools),
                    "isolation": a.isolation,
                    "heartbeat_timeout": a.heartbeat_timeout,
                    "max_steps": a.loops.max_steps,
                    "max_repeats": a.loops.max_repeats,
                }
                for a in app.agents.values()
            ]
        )

    async def startup_probe(request: Request) -> Response:
        return _probe(state.started, "starting")

    async def live_probe(request: Request) -> Response:
        executor = runtime.executor
        if executor is None:
            return _probe(not state.started, "no executor")
        now = time.monotonic()
        age = now - executor.last_tick
        if age > state.live_within:
            return _probe(False, f"executor loop silent for {age:.1f}s")
        scheduler = runtime.scheduler
        if scheduler is not None and now - scheduler.last_tick > state.live_within:
            return _probe(False, f"scheduler silent for {now - scheduler.last_tick:.1f}s")
        return _probe(True, "")

    async def ready_probe(request: Request) -> Response:
        if not state.started:
            return _probe(False, "starting")
        if state.draining:
            return _probe(False, "draining")
        try:
            async with asyncio.timeout(state.ping_timeout):
                await store.ping()
        except Exception as exc:
            return _probe(False, f"store unreachable: {exc}")
        return _probe(True, "")

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    async def index(request: Request) -> Response:
        return JSONResponse({"app": app.name, "agents": sorted(app.agents), "api": "/openapi.json"})

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _ApiError)
        return _error(exc.status, exc.message)

    async def on_nonstop_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, StoreError):
            return _error(503, str(exc))
        if isinstance(exc, RunNotFound):
            return _error(404, str(exc))
        if isinstance(exc, InvalidState):
            return _error(409, str(exc))
        if isinstance(exc, UnknownAgent | InvalidInput):
            return _error(422, str(exc))
        return _error(400, str(exc))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        response = _error(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})  # e.g. Allow on a 405
        return response

    routes = [
        Route("/", index),
        Route("/api/runs", start_run, methods=["POST"]),
        Route("/api/runs", list_runs, methods=["GET"]),
        Route("/api/runs/{run_id:path}/cancel", cancel_run, methods=["POST"]),
        Route("/api/runs/{run_id:path}/pause", pause_run, methods=["POST"]),
        Route("/api/runs/{run_id:path}/resume", resume_run, methods=["POST"]),
        Route("/api/runs/{run_id:path}/signal/{name}", signal_run, methods=["POST"]),
        Route("/api/events/{topic}", emit_event, methods=["POST"]),
        Route("/api/runs/{run_id:path}", get_run, methods=["GET"]),
        Route("/api/dlq", list_dlq, methods=["GET"]),
        Route("/api/dlq/{run_id:path}/replay", replay_dlq, methods=["POST"]),
        Route("/api/agents", list_agents, methods=["GET"]),
        Route("/healthz/startup", startup_probe),
        Route("/healthz/live", live_probe),
        Route("/healthz/ready", ready_probe),
        Route("/openapi.json", openapi),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(_Guard, token=token)],
        exception_handlers={
            _ApiError: on_api_error,
            NonstopError: on_nonstop_error,
            HTTPException: on_http_error,
        },
    )


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _ApiError(400, f"query parameter {name!r} must be an integer") from None
    if not 0 <= value <= _MAX_LIMIT:
        raise _ApiError(400, f"query parameter {name!r} must be between 0 and {_MAX_LIMIT}")
    return value


def _probe(ok: bool, reason: str) -> Response:
    if ok:
        return JSONResponse({"status": "ok"})
    return JSONResponse({"status": "fail", "reason": reason}, status_code=503)


def _schema_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _op(
    summary: str,
    ok: str,
    schema: dict[str, Any],
    *,
    body: bool = False,
    params: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        ok: {"description": "OK", "content": {"application/json": {"schema": schema}}},
        "4XX": {
            "description": "Bad request",
            "content": {"application/json": {"schema": _schema_ref("Error")}},
        },
    }
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if params:
        operation["parameters"] = params
    if body:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _schema_ref("StartRun")}},
        }
    return operation


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


_RUN_ID = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}}
_QUERY = [
    {"name": "agent", "in": "query", "required": False, "schema": {"type": "string"}},
    {
        "name": "status",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "enum": [s.value for s in RunStatus]},
    },
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 0},
    },
]
_RUN = _schema_ref("Run")
_PROBE = {"type": "object", "properties": {"status": {"type": "string"}}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "nonstop", "version": "1"},
    "paths": {
        "/api/runs": {
            "post": _op("Start a run (idempotent by id)", "202", _schema_ref("Started"), body=True),
            "get": _op(
                "List runs, newest first", "200", {"type": "array", "items": _RUN}, params=_QUERY
            ),
        },
        "/api/runs/{run_id}": {"get": _op("A run with its steps", "200", _RUN, params=[_RUN_ID])},
        "/api/runs/{run_id}/cancel": {"post": _op("Cancel a run", "200", _RUN, params=[_RUN_ID])},
        "/api/runs/{run_id}/pause": {
            "post": _op("Pause a run at its next step boundary", "200", _RUN, params=[_RUN_ID])
        },
        "/api/runs/{run_id}/resume": {
            "post": _op("Resume a paused run", "200", _RUN, params=[_RUN_ID])
        },
        "/api/runs/{run_id}/signal/{name}": {
            "post": _op(
                "Send a signal (the body is its JSON data)",
                "200",
                _RUN,
                params=[_RUN_ID, _path_param("name")],
            )
        },
        "/api/events/{topic}": {
            "post": _op(
                "Publish an event (the body is its JSON object payload)",
                "202",
                {"type": "object"},
                params=[_path_param("topic")],
            )
        },
        "/api/dlq": {
            "get": _op("Dead runs", "200", {"type": "array", "items": _RUN}, params=_QUERY[2:])
        },
        "/api/dlq/{run_id}/replay": {
            "post": _op("Replay a dead run", "200", _RUN, params=[_RUN_ID])
        },
        "/api/agents": {"get": _op("Declared agents", "200", {"type": "array"})},
        "/healthz/startup": {"get": _op("Startup probe", "200", _PROBE)},
        "/healthz/live": {"get": _op("Liveness probe", "200", _PROBE)},
        "/healthz/ready": {"get": _op("Readiness probe", "200", _PROBE)},
    },
    "components": {
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}},
            },
            "StartRun": {
                "type": "object",
                "required": ["agent"],
                "properties": {
                    "agent": {"type": "string"},
                    "input": {"type": "object"},
                    "id": {"type": "string"},
                },
            },
            "Started": {
                "type": "object",
                "properties": {
                    "run_id": {"type": "string"},
                    "status": {"type": "string"},
                    "created": {"type": "boolean"},
                    "url": {"type": "string"},
                },
            },
            "Run": {
                "type": "object",
                "properties": {
                    "run_id": {"type": "string"},
                    "agent": {"type": "string"},
                    "status": {"type": "string"},
                    "why": {"type": "string"},
                },
            },
        }
    },
}
