"""A node: one `nonstop serve` process with its store, executor, HTTP API and signals.

SIGTERM or SIGINT starts a graceful shutdown: readiness fails, no new run is claimed, runs
in flight get `grace_period` seconds to reach a resting state, the rest are stopped and
their leases handed back. A second signal exits at once; nothing is lost either way,
because every checkpoint is already in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn

from nonstop.api import NodeState, create_api
from nonstop.app import App, Runtime
from nonstop.errors import ConfigError, NonstopError
from nonstop.observe.logging import configure, get_logger
from nonstop.store import open_store

log = get_logger("nonstop.node")


@dataclass(frozen=True, slots=True)
class NodeSettings:
    host: str = "127.0.0.1"
    port: int = 8642
    concurrency: int = 100
    grace_period: float = 30.0
    lease_ttl: float = 30.0
    poll_interval: float = 0.5


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the node owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Node:
    def __init__(self, app: App, url: str, settings: NodeSettings) -> None:
        self.app = app
        self.url = url
        self.settings = settings
        self.state = NodeState()
        self.token = os.environ.get("NONSTOP_API_TOKEN") or None

    def run(self) -> int:
        """Serve until told to stop; return the process exit code."""
        if not self.token and not _is_loopback(self.settings.host):
            raise ConfigError(
                f"refusing to serve on {self.settings.host} without NONSTOP_API_TOKEN"
                " (only loopback addresses may be served without a token)"
            )
        configure(json=True)
        return asyncio.run(self._main())

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_signal(signum: int) -> None:
            if stop.is_set():
                log.warning("forced_exit", signal=signal.Signals(signum).name)
                os._exit(1)
            log.info(
                "shutting_down",
                signal=signal.Signals(signum).name,
                grace_period=self.settings.grace_period,
            )
            self.state.draining = True
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)

        store = open_store(self.url, create=True)
        await store.open()
        runtime = Runtime(self.app, store)
        try:
            await runtime.start_worker(
                concurrency=self.settings.concurrency,
                lease_ttl=self.settings.lease_ttl,
                poll_interval=self.settings.poll_interval,
            )
            self.state.started = True
            config = uvicorn.Config(
                create_api(runtime, self.state, self.token),
                host=self.settings.host,
                port=self.settings.port,
                log_config=None,
                access_log=False,
                lifespan="off",
            )
            server = _Server(config)
            serving = asyncio.create_task(server.serve())
            log.info(
                "node_started",
                app=self.app.name,
                agents=sorted(self.app.agents),
                database=self.url,
                url=f"http://{self.settings.host}:{self.settings.port}",
                node=runtime.executor.owner if runtime.executor else None,
            )
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            self.state.draining = True
            if serving.done():
                stopping.cancel()
                failure = serving.exception() if not serving.cancelled() else None
                if failure is not None or not stop.is_set():
                    raise NonstopError(
                        f"HTTP server on {self.settings.host}:{self.settings.port} stopped:"
                        f" {failure or 'could not start (port in use?)'}"
                    )
            await runtime.stop_worker(self.settings.grace_period)
            server.should_exit = True
            await serving
            log.info("node_stopped")
            return 0
        finally:
            await runtime.close()
