"""Column types that differ between SQLite and PostgreSQL, shared by the schema and its migrations.

SQLAlchemy's PostgreSQL dialect is imported only when a PostgreSQL database is opened (register): it costs
a tenth of every cold SQLite query otherwise.

Each renders exactly as before on SQLite (no SQLite database changes); on PostgreSQL:
- embeddings are pgvector `vector` values (the repository still sees little-endian float32 bytes);
- file sizes and nanosecond mtimes are BIGINT (SQLite integers are 64-bit already);
- paths compare bytewise (COLLATE "C"), which the prefix-range scans in repository.under rely on;
- tag labels are citext (case-insensitive, as SQLite's NOCASE);
- capture times compare bytewise (COLLATE "C") too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import BigInteger, Connection, Integer, LargeBinary, String, Table, Text
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator, TypeEngine, UserDefinedType

POSTGRES = "postgresql"


class CIText(UserDefinedType[str]):
    """PostgreSQL's case-insensitive text (the citext extension)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "CITEXT"


BigInt = Integer().with_variant(BigInteger(), POSTGRES)
PathText = Text().with_variant(Text(collation="C"), POSTGRES)
Label = Text(collation="NOCASE").with_variant(CIText(), POSTGRES)
# A capture time as 'YYYY-MM-DDTHH:MM:SS': compared and sorted bytewise, as a date is (not by a locale's rules).
Stamp = String(19).with_variant(String(19, collation="C"), POSTGRES)


class Vector(UserDefinedType[bytes]):
    """pgvector's `vector(dim)` (dim None: any dimension), exchanged in its text form '[x,y,...]'."""

    cache_ok = True

    def __init__(self, dim: int | None = None):
        self.dim = dim

    def get_col_spec(self, **kw: Any) -> str:
        return "vector" if self.dim is None else f"vector({self.dim})"


def register() -> None:
    """Before a PostgreSQL database is used: the dialect reads these types back (Alembic's schema comparison)."""
    from sqlalchemy.dialects.postgresql import base

    base.ischema_names.update({"vector": Vector, "citext": CIText})


def vector_text(value: bytes) -> str:
    """float32 bytes as pgvector's input text (9 significant digits read back to the same float32)."""
    return "[" + ",".join([f"{x:.9g}" for x in np.frombuffer(value, dtype="<f4").tolist()]) + "]"


class VectorOut(FunctionElement[bytes]):
    """A selected embedding: pgvector's binary form (vector_send: dim, unused, big-endian float4s), not text,
    which is ten times cheaper to parse; the column itself in SQLite."""

    inherit_cache = True


@compiles(VectorOut)
def _vector_out(element: VectorOut, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(VectorOut, POSTGRES)
def _vector_out_pg(element: VectorOut, compiler: Any, **kw: Any) -> str:
    return f"vector_send({compiler.process(element.clauses, **kw)})"


class Embedding(TypeDecorator[bytes]):
    """An embedding as float32 bytes: a BLOB in SQLite, a pgvector `vector` in PostgreSQL."""

    impl = LargeBinary
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect.type_descriptor(Vector() if dialect.name == POSTGRES else LargeBinary())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return value if value is None or dialect.name != POSTGRES else vector_text(value)

    def column_expression(self, column: Any) -> Any:
        out = VectorOut(column)
        out.type = self
        return out

    def process_result_value(self, value: Any, dialect: Dialect) -> bytes | None:
        if value is None or dialect.name != POSTGRES:
            return value
        return np.frombuffer(value, dtype=">f4", offset=4).astype("<f4").tobytes()


def insert_into(conn: Connection, table: Table) -> Any:
    """An INSERT with ON CONFLICT support in the connection's dialect (both offer the same methods)."""
    if conn.dialect.name == POSTGRES:
        from sqlalchemy.dialects.postgresql import insert

        return insert(table)
    return sqlite.insert(table)
