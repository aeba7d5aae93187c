"""Sustained call-log writer throughput: submit N realistic records and time until all are stored.

Run pinned to one core by bench/logging; prints one JSON line. The records carry the benchmark's PII
request and a chat.completion reply, so sealing (usage, redaction, encryption) does real work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from log_bench import pii_body  # noqa: E402
from overhead_fixtures import completion_body  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from minigate.logger.pipeline import CallLog  # noqa: E402
from minigate.logger.records import CallRecord  # noqa: E402
from minigate.logger.seal import Sealer  # noqa: E402
from minigate.logger.settings import LoggingSection  # noqa: E402


async def run(store: str, spool: Path, key: str, records: int) -> dict[str, object]:
    settings = LoggingSection(store=store, spool=spool, encryption_key=key, queue_size=records)  # type: ignore[arg-type]
    registry = CollectorRegistry()
    calls = CallLog(settings, registry, Sealer.from_settings(settings))
    await calls.start()
    reply = completion_body().encode()
    requests = [pii_body(n).encode() for n in range(records)]  # each user turn differs, as in real traffic
    started = time.perf_counter()
    for request in requests:
        calls.submit(CallRecord(request_id=uuid.uuid4().hex, started_at=time.time(), key_name="bench", route="gpt-4.1",
                                model="gpt-4.1", tier="frontier", task="unknown", rule="default", upstream="nginx",
                                status=200, latency_s=0.01, stream=False, request_body=request, user="u-1",
                                reply=reply))
    while (registry.get_sample_value("minigate_log_records_written_total") or 0) < records:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    await calls.stop()
    return {"records": records, "seconds": round(elapsed, 3), "records_per_s": records / elapsed,
            "spooled": registry.get_sample_value("minigate_log_records_spooled_total")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", required=True)
    parser.add_argument("--spool", type=Path, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--records", type=int, default=20000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.store, args.spool, args.key, args.records))))


if __name__ == "__main__":
    main()
