"""*Log pipeline*: the call log's queue, and where its records went (written, spooled, dropped).

A healthy gateway writes every record and drops none: spooled records mean the store was down or
the queue full (they replay later); a dropped record is a lost call and must stay at 0.
"""

from __future__ import annotations

from grafana_foundation_sdk.models.dashboard import Dashboard
from panels import Query, Row, build_dashboard, stat_panel, time_series
from promql import in_range, per_second, selector

__all__ = ["log_pipeline_dashboard"]

QUEUE = selector("minigate_log_queue_depth")
WRITTEN = selector("minigate_log_records_written_total")
SPOOLED = selector("minigate_log_records_spooled_total")
DROPPED = selector("minigate_log_records_dropped_total")


def _summary() -> Row:
    return Row("Selected range", [
        stat_panel("Queue depth now", "Records waiting for the writer, summed over gateways.", "short",
                   Query(f"sum ({QUEUE})"), width=6),
        stat_panel("Written", "Records stored.", "short", Query(in_range(WRITTEN)), width=6),
        stat_panel("Spooled", "Records put in the local spool because the store was down or the queue full.",
                   "short", Query(in_range(SPOOLED)), width=6),
        stat_panel("Dropped", "Records lost. Must stay 0.", "short", Query(in_range(DROPPED)), must_stay_zero=True,
                   width=6),
    ])


def _over_time() -> Row:
    return Row("Over time", [
        time_series("Queue depth by gateway", "Records waiting for the writer.", "short",
                    Query(f"max by (instance) ({QUEUE})", "{{instance}}")),
        time_series("Records per second", "", "cps",
                    Query(per_second(WRITTEN), "written"), Query(per_second(SPOOLED), "spooled"),
                    Query(per_second(DROPPED), "dropped")),
    ])


def log_pipeline_dashboard() -> Dashboard:
    return build_dashboard(
        "minigate-log-pipeline", "minigate: Log pipeline",
        "The call log's queue depth and its records written, spooled and dropped.",
        time_from="now-3h", variables=[], rows=[_summary(), _over_time()],
    )
