"""Where the PostgreSQL server is: ``DATABASE_URL``, or (dev mode) an embedded one.

Kept apart from the composition root so a consumer process, which needs only a URL,
does not load the domain and the projections to get one.
"""

from __future__ import annotations

from tododb.devservers.postgres import start_embedded
from tododb.infra.settings import Settings


def resolve_database_url(settings: Settings, *, embedded_ok: bool) -> str:
    if settings.database_url:
        return settings.database_url
    if not embedded_ok:
        raise SystemExit("DATABASE_URL is not set (use `todo dev` for an embedded PostgreSQL)")
    return start_embedded(settings.data_dir)
