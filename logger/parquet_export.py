"""Parquet output for `minigate logs export --format parquet` (the optional `parquet` extra: pyarrow).

One fixed schema, so files from different windows concatenate and every column keeps its type even
when a page holds only nulls. Nested values (payloads, attempts) are JSON text: a dataset reader gets
exactly the JSONL export's content, and Parquet readers need no schema for conversation structure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

__all__ = ["ParquetSink"]

_JSON_COLUMNS = ("attempts", "feedback", "request", "response")


class ParquetSink:
    """Writes pages of exported rows as row groups of one Parquet file; `close()` finishes the file."""

    def __init__(self, path: Path) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise RuntimeError("Parquet export needs pyarrow: pip install 'minigate[parquet]'") from exc
        self._pa = pa
        text, number, integer = pa.string(), pa.float64(), pa.int64()
        self._schema = pa.schema([
            ("request_id", text), ("started_at", number), ("key_name", text), ("client_id", text), ("route", text),
            ("model", text), ("tier", text), ("task", text), ("rule", text), ("upstream", text), ("status", integer),
            ("latency_s", number), ("ttft_s", number), ("stream", pa.bool_()), ("input_tokens", integer),
            ("output_tokens", integer), ("attempts", text), ("escalated", text), ("cost_usd", number),
            ("counterfactual_cost_usd", number), ("shadow_of", text), ("verdict", text), ("candidate", text),
            ("wasted_input_tokens", integer), ("wasted_output_tokens", integer), ("wasted_cost_usd", number),
            ("feedback", text), ("request", text), ("response", text),
        ])
        self._writer = pq.ParquetWriter(str(path), self._schema, compression="zstd")

    def write(self, rows: list[dict[str, Any]]) -> None:
        columns = {name: [row.get(name) for row in rows] for name in self._schema.names}
        for name in _JSON_COLUMNS:
            columns[name] = [None if value is None else orjson.dumps(value).decode() for value in columns[name]]
        self._writer.write_table(self._pa.table(columns, schema=self._schema))

    def close(self) -> None:
        self._writer.close()
