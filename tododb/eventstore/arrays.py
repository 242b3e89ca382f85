"""An append's array parameters, packed here in PostgreSQL's binary array format.

psycopg dumps a Python list by walking it to find its element type, choosing a dumper
for that, then dumping each element in turn: for the four short arrays of an append that
was a fifth of a command's CPU (py-spy ``--gil`` of ``create_todo``). The element types
of the append's columns never change, so each column is packed in one go here and psycopg
sends the bytes as they are (``BinaryArray``, with a dumper registered for each type).

The format is ``array_recv``'s: dimensions, a has-nulls flag, the element type, each
dimension's length and lower bound, then every element as its length and its bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from uuid import UUID

import psycopg
from psycopg.adapt import Dumper
from psycopg.errors import NumericValueOutOfRange
from psycopg.pq import Format

_TYPES = psycopg.postgres.types
_ONE_DIMENSION = struct.Struct("!iiiii")  # dimensions, has nulls, element type, length, lower bound
_NO_DIMENSION = struct.Struct("!iii")  # an empty array has none
_LENGTH = struct.Struct("!i")
_BIGINT = struct.Struct("!iq")  # length 8, then the value
_OIDS = {element: _TYPES[element].oid for element in ("uuid", "int8", "text", "bytea")}
"""Element types' oids, looked up once: the registry's lookup is not free per append."""


class BinaryArray:
    """A one-dimensional array without nulls, already in binary format."""

    __slots__ = ("data",)
    element = "bytea"

    def __init__(self, data: bytes) -> None:
        self.data = data


class UuidArray(BinaryArray):
    __slots__ = ()
    element = "uuid"


class BigintArray(BinaryArray):
    __slots__ = ()
    element = "int8"


class TextArray(BinaryArray):
    __slots__ = ()
    element = "text"


class ByteaArray(BinaryArray):
    __slots__ = ()
    element = "bytea"


def uuids(values: Sequence[UUID]) -> UuidArray:
    return UuidArray(_pack("uuid", len(values), (v.bytes for v in values)))


def bigints(values: Sequence[int]) -> BigintArray:
    """Raises what PostgreSQL would for a value out of range (a ``DataError``)."""
    try:
        packed = b"".join(_BIGINT.pack(8, v) for v in values)
    except struct.error:
        raise NumericValueOutOfRange("bigint out of range") from None
    return BigintArray(_header("int8", len(values)) + packed)


def texts(values: Sequence[str]) -> TextArray:
    """Raises a ``DataError`` for text UTF-8 cannot hold (a lone surrogate), as psycopg
    would; PostgreSQL refuses the rest (NUL) itself."""
    try:
        encoded = [v.encode() for v in values]
    except UnicodeEncodeError as e:
        raise psycopg.DataError(f"text UTF-8 cannot encode: {e.reason}") from None
    return TextArray(_pack("text", len(values), encoded))


def byteas(values: Sequence[bytes]) -> ByteaArray:
    return ByteaArray(_pack("bytea", len(values), values))


def _pack(element: str, count: int, items: Iterable[bytes]) -> bytes:
    parts = [_header(element, count)]
    for item in items:
        parts.append(_LENGTH.pack(len(item)))
        parts.append(item)
    return b"".join(parts)


def _header(element: str, count: int) -> bytes:
    oid = _OIDS[element]
    if count == 0:
        return _NO_DIMENSION.pack(0, 0, oid)
    return _ONE_DIMENSION.pack(1, 0, oid, count, 1)


def _dumper(array: type[BinaryArray]) -> type[Dumper]:
    class ArrayDumper(Dumper):
        format = Format.BINARY
        oid = _TYPES[array.element].array_oid

        def dump(self, obj: BinaryArray) -> bytes:
            return obj.data

    return ArrayDumper


for _array in (UuidArray, BigintArray, TextArray, ByteaArray):
    # On the global map, so every connection made from now on has them; the types are
    # this module's own, so nothing else is dumped differently.
    psycopg.adapters.register_dumper(_array, _dumper(_array))
