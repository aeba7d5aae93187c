"""Where call records are kept: the store interface and its choice by URL (`base`), the SQLite and
PostgreSQL stores (`sqlite`, `postgres`, imported only when their URL is opened), their shared schema
(`migrations`) and the queries readers make (`query`). Callers import the public names from here.
"""

from __future__ import annotations

from minigate.logger.stores.base import (
    KEY_USAGE,
    CallStore,
    SealedPayloads,
    StoredKey,
    StoredResponse,
    open_store,
    reseal_sql,
    sealed_sql,
)
from minigate.logger.stores.query import (
    METADATA_COLUMNS,
    PAYLOAD_COLUMNS,
    CallQuery,
    Kind,
    decode_cursor,
    encode_cursor,
    parse_time,
)

__all__ = [
    "KEY_USAGE",
    "METADATA_COLUMNS",
    "PAYLOAD_COLUMNS",
    "CallQuery",
    "CallStore",
    "Kind",
    "SealedPayloads",
    "StoredKey",
    "StoredResponse",
    "decode_cursor",
    "encode_cursor",
    "open_store",
    "parse_time",
    "reseal_sql",
    "sealed_sql",
]
