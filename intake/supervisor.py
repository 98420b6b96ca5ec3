"""The supervisor: runs every long-running part of the gateway, restarts what crashes, and says how each is doing.

A component is anything with a ``name``, a ``run()`` that is its whole life
(returning once ``stop()`` has been called) and a ``stop()``; it may also have
a ``health()`` that returns why it is degraded, or None while it is fine, and
an ``open()`` for what must be in place before the gateway says it has
started (a listening socket: a port already taken fails the start, loudly).
The publisher, the reply sender, each channel's listener, mailbox watcher or
poller are components. The supervisor is the one place that:

- logs a crash at once, with the component's name and the traceback;
- restarts the component with capped exponential backoff (a component that
  ran well for a while before it crashed starts again from the first delay);
- keeps each component's state for ``/readyz`` (``ok``, ``degraded: <why>``,
  ``restarting: <error>``, ``starting``, ``stopped``) and in ``/metrics``
  (``intake_component_up{component}``, ``intake_component_restarts_total``).

A loop inside a component still handles the failures it expects (a mailbox
that drops the connection, Kafka being away); what it does not expect ends
its ``run()`` with an exception and comes here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from intake.metrics import Metrics
from intake.pause import pause

log = logging.getLogger("intake.supervisor")


class Component(Protocol):
    name: str

    async def run(self) -> None:
        """The component's whole life; returns after ``stop()``. An exception is a crash: it is restarted."""

    async def stop(self) -> None:
        """Ask ``run()`` to finish the work in hand and return."""


@runtime_checkable
class HasHealth(Protocol):
    def health(self) -> str | None:
        """Why the component is degraded (shown to operators), or None while it is fine."""


@runtime_checkable
class Opens(Protocol):
    async def open(self) -> None:
        """Bind, load, check: what must work before the gateway has started. Not retried: it raises to fail the start."""


@dataclass(frozen=True)
class ComponentState:
    name: str
    state: str  # starting | ok | degraded | restarting | stopped
    detail: str | None
    restarts: int
    since: float  # monotonic time of the last change of ``state``

    @property
    def up(self) -> bool:
        return self.state in ("ok", "degraded")

    def describe(self) -> str:
        return f"{self.state}: {self.detail}" if self.detail else self.state


class _Supervised:
    """One component and the task that runs it, restarting it after each crash."""

    def __init__(self, component: Component, supervisor: Supervisor) -> None:
        self.component = component
        self.supervisor = supervisor
        self.state = "starting"
        self.detail: str | None = None
        self.restarts = 0
        self.since = time.monotonic()
        self.task: asyncio.Task[None] | None = None

    def _set(self, state: str, detail: str | None = None) -> None:
        if state != self.state:
            self.since = time.monotonic()
        self.state, self.detail = state, detail
        self.supervisor.metrics.component_up.labels(component=self.component.name).set(1 if state in ("ok", "starting") else 0)

    async def life(self) -> None:
        stopping = self.supervisor.stopping
        delay = self.supervisor.first_delay
        name = self.component.name
        while not stopping.is_set():
            started = time.monotonic()
            self._set("ok")
            try:
                await self.component.run()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the component's bug or an unforeseen failure: this is where it is handled
                why = f"{type(error).__name__}: {str(error)[:300]}"
                log.error(
                    "component crashed; restarting it",
                    extra={"event": "component_crashed", "component": name, "error": why, "restart_in": delay},
                    exc_info=error,
                )
            else:
                if stopping.is_set():
                    break
                why = "stopped by itself"
                log.error(
                    "component ended unexpectedly; restarting it",
                    extra={"event": "component_ended", "component": name, "restart_in": delay},
                )
            if time.monotonic() - started >= self.supervisor.healthy_after:
                delay = self.supervisor.first_delay  # it had worked: this crash is news, not a crash loop
            self.restarts += 1
            self.supervisor.metrics.component_restarts.labels(component=name).inc()
            self._set("restarting", why)
            await pause(stopping, delay)
            delay = min(delay * 2, self.supervisor.max_delay)
        self._set("stopped")

    def snapshot(self) -> ComponentState:
        state, detail = self.state, self.detail
        if state == "ok" and isinstance(self.component, HasHealth):
            try:
                reason = self.component.health()
            except Exception as error:  # a broken health check must not break /readyz; it is shown instead
                reason = f"health check failed: {type(error).__name__}"
            if reason:
                state, detail = "degraded", reason
        return ComponentState(self.component.name, state, detail, self.restarts, self.since)


class Supervisor:
    """Runs components from ``start()`` to ``stop()``; ``states()`` tells how each is doing."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        first_delay: float = 0.5,
        max_delay: float = 30.0,
        healthy_after: float = 60.0,
    ) -> None:
        self.metrics = metrics
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.healthy_after = healthy_after
        self.stopping = asyncio.Event()
        self._supervised: list[_Supervised] = []

    def add(self, component: Component) -> None:
        if any(s.component.name == component.name for s in self._supervised):
            raise ValueError(f"two components named {component.name!r}")
        self._supervised.append(_Supervised(component, self))
        self.metrics.component_up.labels(component=component.name).set(0)
        self.metrics.component_restarts.labels(component=component.name)  # shown as 0 before the first restart

    async def start(self) -> None:
        """Open the components that need it (in order), then run them all."""
        self.stopping.clear()
        for supervised in self._supervised:
            if isinstance(supervised.component, Opens):
                await supervised.component.open()
        for supervised in self._supervised:
            supervised.task = asyncio.create_task(supervised.life(), name=f"component:{supervised.component.name}")

    async def stop(self, timeout: float) -> None:
        """Stop the components in the reverse order they were added (channels before the publisher), each within ``timeout``."""
        self.stopping.set()
        for supervised in reversed(self._supervised):
            if supervised.task is None:
                continue
            try:
                await supervised.component.stop()
            except Exception:  # stopping goes on for the others
                log.exception("component failed to stop", extra={"event": "component_stop_failed", "component": supervised.component.name})
            _done, pending = await asyncio.wait({supervised.task}, timeout=timeout)
            if pending:
                log.warning("component did not stop in time", extra={"event": "component_stop_timeout", "component": supervised.component.name})
                supervised.task.cancel()
                await asyncio.wait({supervised.task}, timeout=1.0)
            supervised.task = None

    def states(self) -> list[ComponentState]:
        return [supervised.snapshot() for supervised in self._supervised]

    def state(self, name: str) -> ComponentState:
        for supervised in self._supervised:
            if supervised.component.name == name:
                return supervised.snapshot()
        raise KeyError(name)
