"""Panel, variable and dashboard shapes shared by minigate's dashboards, on grafana-foundation-sdk builders.

Sizes, units, legends and the data source are set here once: a dashboard module only says which
queries go in which panel. Every panel reads from the `${datasource}` variable, so the JSON imports
into any Grafana whatever its Prometheus data source is called.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from grafana_foundation_sdk.builders import (
    bargauge,
    common,
    dashboard,
    prometheus,
    stat,
    timeseries,
)
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.common import (
    BarGaugeDisplayMode,
    BigValueColorMode,
    BigValueGraphMode,
    DataSourceRef,
    LegendDisplayMode,
    LegendPlacement,
    VizOrientation,
)

__all__ = ["Panel", "Query", "Row", "bars", "build_dashboard", "stat_panel", "time_series", "variable"]

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
Panel = timeseries.Panel | stat.Panel | bargauge.Panel
P = TypeVar("P", timeseries.Panel, stat.Panel, bargauge.Panel)


@dataclass(frozen=True)
class Query:
    """One PromQL target; `legend` is Grafana's legend format (`{{model}}`)."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Row:
    """A titled row of panels; panels flow left to right and wrap at the dashboard's width."""

    title: str
    panels: Sequence[Panel]


def _targets(queries: Sequence[Query], *, instant: bool) -> list[Builder[Any]]:
    targets: list[Builder[Any]] = []
    for index, query in enumerate(queries):
        target = prometheus.Dataquery().expr(query.expr).ref_id(chr(ord("A") + index))
        if query.legend:
            target.legend_format(query.legend)
        targets.append(target.instant() if instant else target.range())
    return targets


def _titled(panel: P, title: str, description: str, unit: str) -> P:
    panel.title(title).datasource(DATASOURCE).unit(unit)
    return panel.description(description) if description else panel


def time_series(title: str, description: str, unit: str, *queries: Query, width: int = 12) -> timeseries.Panel:
    """A graph over time: rates and quantiles, with a table legend showing each series' mean and last value."""
    legend = (common.VizLegendOptions().display_mode(LegendDisplayMode.TABLE).placement(LegendPlacement.BOTTOM)
              .show_legend(True).calcs(["mean", "lastNotNull"]))
    return (_titled(timeseries.Panel(), title, description, unit).targets(_targets(queries, instant=False))
            .legend(legend).fill_opacity(10).height(8).span(width))


def stat_panel(title: str, description: str, unit: str, query: Query, *, must_stay_zero: bool = False,
               width: int = 4, height: int = 4) -> stat.Panel:
    """One number for the selected range; `must_stay_zero` turns it red from the first count."""
    steps = [model.Threshold(None, "green")] + ([model.Threshold(1, "red")] if must_stay_zero else [])
    thresholds = dashboard.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(steps)
    return (_titled(stat.Panel(), title, description, unit).targets(_targets([query], instant=True))
            .thresholds(thresholds).reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
            .graph_mode(BigValueGraphMode.NONE).color_mode(BigValueColorMode.VALUE).height(height).span(width))


def bars(title: str, description: str, unit: str, query: Query, *, width: int = 6) -> bargauge.Panel:
    """One horizontal bar per label value (model, tier, task) for the selected range."""
    return (_titled(bargauge.Panel(), title, description, unit).targets(_targets([query], instant=True))
            .orientation(VizOrientation.HORIZONTAL).display_mode(BarGaugeDisplayMode.GRADIENT).min(0)
            .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
            .height(8).span(width))


def variable(name: str, label: str, metric: str, description: str) -> dashboard.QueryVariable:
    """A multi-select label filter; `All` becomes `.*` so queries can always use `label=~"$name"`."""
    return (dashboard.QueryVariable(name).label(label).description(description).datasource(DATASOURCE)
            .query(f"label_values({metric}, {name})").refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_ASC).multi(True).include_all(True).all_value(".*")
            .current(model.VariableOption(selected=True, text="All", value="$__all")))


def build_dashboard(uid: str, title: str, description: str, *, time_from: str, variables: Sequence[
        dashboard.QueryVariable], rows: Sequence[Row]) -> model.Dashboard:
    """The dashboard with its data source and job variables first, then `variables`, then `rows` in order."""
    builder = (dashboard.Dashboard(title).uid(uid).description(description).tags(["minigate"])
               .time(time_from, "now").refresh("1m").tooltip(model.DashboardCursorSync.CROSSHAIR).readonly()
               .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
               .with_variable(variable("job", "Job", "minigate_requests_total",
                                       "The Prometheus job(s) scraping minigate.")))
    for extra in variables:
        builder.with_variable(extra)
    panel_id = 0
    for row in rows:
        panel_id += 1
        builder.with_row(dashboard.Row(row.title).id(panel_id))
        for panel in row.panels:
            panel_id += 1
            builder.with_panel(panel.id(panel_id))
    return builder.build()

