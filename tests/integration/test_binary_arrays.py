"""The append's arrays, packed by ``eventstore.arrays``, read back by PostgreSQL as the
arrays psycopg would have sent: same types, same values, same errors."""

from __future__ import annotations

from uuid import uuid4

import psycopg
import pytest

from tododb.eventstore import arrays


def test_packed_arrays_are_the_arrays_postgresql_reads(database_url: str) -> None:
    ids = [uuid4(), uuid4(), uuid4()]
    versions = [1, 2**63 - 1, -(2**63)]
    topics = ["tododb.domain.todo:Todo.Created", "é 日本 🙂", ""]
    states = [b'{"title": "x"}', b"\x00\xff" * 1000, b""]
    packed = (
        arrays.uuids(ids),
        arrays.bigints(versions),
        arrays.texts(topics),
        arrays.byteas(states),
    )
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT %b::uuid[], %b::bigint[], %b::text[], %b::bytea[],"
            " pg_typeof(%b), pg_typeof(%b), pg_typeof(%b), pg_typeof(%b)",
            (*packed, *packed),
        ).fetchone()
    assert row is not None
    assert list(row[:4]) == [ids, versions, topics, states]
    assert [str(t) for t in row[4:]] == ["uuid[]", "bigint[]", "text[]", "bytea[]"]


def test_empty_arrays(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT cardinality(%b::uuid[]), cardinality(%b::bigint[]),"
            " cardinality(%b::text[]), cardinality(%b::bytea[])",
            (arrays.uuids([]), arrays.bigints([]), arrays.texts([]), arrays.byteas([])),
        ).fetchone()
    assert row == (0, 0, 0, 0)


def test_values_postgresql_cannot_hold_are_data_errors(database_url: str) -> None:
    with pytest.raises(psycopg.DataError, match="bigint out of range"):
        arrays.bigints([2**63])
    with pytest.raises(psycopg.DataError, match="UTF-8"):
        arrays.texts(["\ud800"])  # a lone surrogate
    with (
        psycopg.connect(database_url, autocommit=True) as conn,
        pytest.raises(psycopg.DataError),
    ):
        conn.execute("SELECT %b::text[]", (arrays.texts(["NUL \x00 inside"]),))
