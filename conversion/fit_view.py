"""How `minigate router fit --cv` shows its report to people: one rich table, a row per inputs and scheme.

Kept apart from `fit_cv.py` so the cross-validation itself stays plain values.
"""

from __future__ import annotations

from rich.table import Table

from minigate.conversion.fit_cv import CvReport, Figures

__all__ = ["cv_table"]

_SCHEMES = {"random": "random", "subjects": "leave subjects out"}


def cv_table(report: CvReport) -> Table:
    """AUC, APGR and CPTs per row; a dash where the data has no outcomes of both models (no APGR then)."""
    table = Table("inputs", "cv", "AUC", "APGR", "CPT(50%)", "CPT(80%)", title=_title(report))
    for row in report.rows:
        table.add_row(row.variant, _SCHEMES[row.cv], f"{row.auc:.3f}", *_routing(row))
    return table


def _title(report: CvReport) -> str:
    title = (f"{report.folds}-fold cross-validation: {report.examples} requests, {report.subjects} subjects, "
             f"{report.needs_frontier_share:.1%} need the frontier")
    if report.strong_accuracy is None or report.weak_accuracy is None:
        return title
    return f"{title}; strong model right on {report.strong_accuracy:.1%}, weak on {report.weak_accuracy:.1%}"


def _routing(row: Figures) -> tuple[str, str, str]:
    if row.apgr is None or row.cpt50 is None or row.cpt80 is None:
        return "-", "-", "-"
    return f"{row.apgr:.3f}", f"{row.cpt50:.1f}%", f"{row.cpt80:.1f}%"
