"""Write minigate's Grafana dashboards, `dashboards/*.json`, from the Python next to this file.

    python dashboards/build.py          # rewrite the JSON files
    python dashboards/build.py --check  # exit 1 when a committed file differs from what this builds

The dashboards are built with grafana-foundation-sdk, pinned to its build for the current Grafana
dashboard model (schemaVersion 41). The package's version epochs make a plain `pip install
grafana-foundation-sdk` pick its Grafana 10.1 build instead (schemaVersion 36), hence the check below.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from cost import cost_dashboard
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard
from latency import latency_dashboard
from log_pipeline import log_pipeline_dashboard

__all__ = ["DASHBOARDS", "SDK_VERSION", "render"]

SDK_VERSION = "1769699241"
HERE = Path(__file__).resolve().parent
DASHBOARDS: dict[str, Callable[[], Dashboard]] = {
    "cost-and-savings.json": cost_dashboard,
    "latency-and-reliability.json": latency_dashboard,
    "log-pipeline.json": log_pipeline_dashboard,
}


def render(build: Callable[[], Dashboard]) -> str:
    """Stable text (sorted keys, two-space indent) so a change to a panel is a readable diff."""
    return json.dumps(build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    check = parser.parse_args().check
    installed = version("grafana-foundation-sdk")
    if installed != SDK_VERSION:
        print(f"grafana-foundation-sdk {installed} is installed; these dashboards are built with "
              f"{SDK_VERSION}: pip install 'grafana-foundation-sdk=={SDK_VERSION}'", file=sys.stderr)
        return 2
    stale = []
    for name, build in DASHBOARDS.items():
        path, text = HERE / name, render(build)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run python dashboards/build.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
