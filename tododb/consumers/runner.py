"""Building and running each consumer process (used by the CLI and the tests)."""

from __future__ import annotations

import asyncio

from tododb.consumers.analytics.handler import AnalyticsHandler
from tododb.consumers.core import ConsumerService, Handler
from tododb.consumers.notifications.delivery import DeliveryWorker
from tododb.consumers.notifications.handler import NotificationsHandler
from tododb.consumers.notifications.reminders import Clock, ReminderScheduler
from tododb.infra.settings import Settings

CONSUMERS = ("notifications", "analytics")
"""The consumers this package runs; each is also its default group and its schema."""


def handler_for(consumer: str) -> Handler:
    """A fresh handler of the named consumer (``notifications`` or ``analytics``)."""
    if consumer == "notifications":
        return NotificationsHandler()
    if consumer == "analytics":
        return AnalyticsHandler()
    raise ValueError(f"unknown consumer {consumer!r}; one of {', '.join(CONSUMERS)}")


def consumer_service(
    settings: Settings, database_url: str, consumer: str, group_id: str | None = None
) -> ConsumerService:
    """The consumer core with the named consumer's handler, for operators' commands
    (parked keys, retry, skip) that must handle messages exactly as the consumer does."""
    return ConsumerService(settings, database_url, handler_for(consumer), group_id=group_id)


class NotificationsService:
    """The notifications consumer plus its webhook delivery worker and its reminder
    scheduler, in one process. ``clock``: the scheduler's time (tests move it)."""

    def __init__(
        self,
        settings: Settings,
        database_url: str,
        group_id: str | None = None,
        *,
        clock: Clock | None = None,
    ):
        self.handler = NotificationsHandler()
        self.consumer = ConsumerService(
            settings,
            database_url,
            self.handler,
            group_id=group_id,
            after_commit=self._wake,
        )
        self.worker = DeliveryWorker(settings, self.consumer.pool)
        self.scheduler = ReminderScheduler(
            settings, self.consumer.pool, clock=clock, on_fired=self.worker.wake.set
        )

    def _wake(self) -> None:
        self.worker.wake.set()
        armed = self.handler.take_armed()
        if armed is not None:
            self.scheduler.notice(armed)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self.consumer.prepare(stop)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.consumer.run(stop))
                tasks.create_task(self.worker.run(stop))
                tasks.create_task(self.scheduler.run(stop))
        finally:
            await self.consumer.close()


class AnalyticsService:
    def __init__(self, settings: Settings, database_url: str, group_id: str | None = None):
        self.consumer = ConsumerService(
            settings, database_url, AnalyticsHandler(), group_id=group_id
        )

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self.consumer.run(stop)
        finally:
            await self.consumer.close()
