"""Building and running each consumer process (used by the CLI and the tests)."""

from __future__ import annotations

import asyncio

from tododb.consumers.analytics.handler import AnalyticsHandler
from tododb.consumers.core import ConsumerService
from tododb.consumers.notifications.delivery import DeliveryWorker
from tododb.consumers.notifications.handler import NotificationsHandler
from tododb.infra.settings import Settings


class NotificationsService:
    """The notifications consumer plus its webhook delivery worker, in one process."""

    def __init__(self, settings: Settings, database_url: str, group_id: str | None = None):
        self.consumer = ConsumerService(
            settings,
            database_url,
            NotificationsHandler(),
            group_id=group_id,
            after_commit=self._wake,
        )
        self.worker = DeliveryWorker(settings, self.consumer.pool)

    def _wake(self) -> None:
        self.worker.wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self.consumer.prepare(stop)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.consumer.run(stop))
                tasks.create_task(self.worker.run(stop))
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
