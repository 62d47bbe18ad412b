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
import time
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn

from nonstop.api import NodeState, create_api
from nonstop.app import App, Runtime
from nonstop.errors import ConfigError, NonstopError, StoreUnavailable
from nonstop.observe.logging import configure, get_logger
from nonstop.store import open_store
from nonstop.supervisor import SystemdNotifier

log = get_logger("nonstop.node")


@dataclass(frozen=True, slots=True)
class NodeSettings:
    host: str = "127.0.0.1"
    port: int = 8642
    concurrency: int = 100
    grace_period: float = 30.0
    lease_ttl: float = 30.0
    poll_interval: float = 0.5
    canary_share: float = 0.0


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
        self.systemd = SystemdNotifier()
        self._watchdog: asyncio.Task[None] | None = None

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
            self.systemd.notify("STOPPING=1")
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)

        runtime = Runtime(self.app, open_store(self.url, create=True))
        config = uvicorn.Config(
            create_api(runtime, self.state, self.token),
            host=self.settings.host,
            port=self.settings.port,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
        server = _Server(config)
        serving = asyncio.create_task(server.serve(), name="nonstop-http")
        stopping = asyncio.create_task(stop.wait(), name="nonstop-stop")
        starting = asyncio.create_task(self._start(runtime), name="nonstop-start")
        try:
            waiting = {serving, stopping, starting}
            while True:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                failure = starting.exception() if starting in done else None
                if failure is not None:
                    raise failure
                if serving in done or stopping in done:
                    break
            self.state.draining = True
            if serving.done() and not stop.is_set():
                failure = None if serving.cancelled() else serving.exception()
                raise NonstopError(
                    f"HTTP server on {self.settings.host}:{self.settings.port} stopped:"
                    f" {failure or 'could not start (port in use?)'}"
                )
            starting.cancel()
            await runtime.stop_worker(self.settings.grace_period)
            server.should_exit = True
            await serving
            log.info("node_stopped")
            return 0
        finally:
            tasks = [starting, stopping, serving, *([self._watchdog] if self._watchdog else [])]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await runtime.close()

    async def _ping_watchdog(self, runtime: Runtime) -> None:
        """WATCHDOG=1 while the executor loop keeps ticking: a wedged loop stops the pings
        and systemd restarts the node (`WatchdogSec=`)."""
        assert self.systemd.watchdog_interval is not None
        while True:
            executor = runtime.executor
            if executor is not None and time.monotonic() - executor.last_tick < (
                self.state.live_within
            ):
                self.systemd.notify("WATCHDOG=1")
            await asyncio.sleep(self.systemd.watchdog_interval)

    async def _start(self, runtime: Runtime) -> None:
        """Open the store (waiting out an unreachable database), start the executor, and
        only then report started: until here /healthz/startup answers 503."""
        pause = 0.5
        while True:
            try:
                await runtime.store.open()
                break
            except StoreUnavailable as exc:
                log.error("store_unavailable", error=str(exc), retry_in=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 30.0)
        executor = await runtime.start_worker(
            concurrency=self.settings.concurrency,
            lease_ttl=self.settings.lease_ttl,
            poll_interval=self.settings.poll_interval,
            canary_share=self.settings.canary_share,
        )
        self.state.started = True
        self.systemd.notify("READY=1")
        if self.systemd.watchdog_interval is not None:
            self._watchdog = asyncio.create_task(self._ping_watchdog(runtime))
        log.info(
            "node_started",
            app=self.app.name,
            agents=sorted(self.app.agents),
            database=getattr(runtime.store, "safe_url", self.url),
            url=f"http://{self.settings.host}:{self.settings.port}",
            node=executor.owner,
            version=self.app.version,
            canary_share=self.settings.canary_share,
        )
