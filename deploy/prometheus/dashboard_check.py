"""Evaluate every query of the Grafana dashboards against a running Prometheus.

Grafana is not needed: the panel expressions are read from the dashboard JSON, the
Grafana macros and template variables are replaced with concrete values, and each
query goes to Prometheus's HTTP API. A query "has data" when Prometheus answers
`success` with at least one series.

    python -m deploy.prometheus.dashboard_check --url http://127.0.0.1:9090

prints one line per query and exits 1 when any query returns no data.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "grafana" / "dashboards"

_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*([a-zA-Z_]\w*)\s*\)\s*$")


_PROMQL_KEYWORDS = frozenset(
    "sum min max avg count stddev stdvar topk bottomk quantile count_values group "
    "by without on ignoring group_left group_right bool and or unless offset inf nan".split()
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels excluded)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery windows
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group()
        is_call = text[match.end() :].lstrip().startswith("(")
        if not is_call and word.lower() not in _PROMQL_KEYWORDS:
            names.add(word)
    return names


@dataclass(frozen=True)
class PanelQuery:
    """One Prometheus query of one dashboard panel."""

    dashboard: str
    panel: str
    ref_id: str
    expr: str
    instant: bool


@dataclass(frozen=True)
class VariableQuery:
    """A query-type template variable: `label_values(metric, label)`."""

    name: str
    metric: str
    label: str


def load_dashboards(directory: Path = DASHBOARD_DIR) -> dict[str, dict[str, Any]]:
    """Every dashboard JSON under `directory`, by file name."""
    dashboards = {}
    for path in sorted(directory.glob("*.json")):
        try:
            dashboards[path.name] = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: invalid JSON: {error}") from error
    if not dashboards:
        raise FileNotFoundError(f"no dashboard JSON under {directory}")
    return dashboards


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows; rows themselves excluded."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def panel_queries(dashboard: Mapping[str, Any], name: str = "") -> list[PanelQuery]:
    """The Prometheus expression of every target of every panel."""
    queries = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            expr = target.get("expr", "")
            if not expr.strip():
                raise ValueError(f"{name}: panel {panel.get('title')!r} target {target.get('refId')} has no expr")
            queries.append(
                PanelQuery(name, panel.get("title", ""), target.get("refId", ""), expr, bool(target.get("instant")))
            )
    return queries


def variable_queries(dashboard: Mapping[str, Any]) -> list[VariableQuery]:
    """The query-type template variables; only `label_values(metric, label)` is supported."""
    variables = []
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query)
        match = _LABEL_VALUES.match(text)
        if match is None:
            raise ValueError(f"variable {variable.get('name')!r}: unsupported query {text!r}")
        variables.append(VariableQuery(variable["name"], match.group(1), match.group(2)))
    return variables


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace `$name` and `${name}` with values[name]; raise ValueError on one left unset."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise ValueError(f"no value for ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, expr)


def macro_values(scrape_interval_s: float) -> dict[str, str]:
    """Grafana's macros for a Prometheus scraping every `scrape_interval_s` seconds.

    $__rate_interval is four scrape intervals (Grafana's minimum for it), so rate()
    always sees at least two samples.
    """
    rate_interval = max(4 * scrape_interval_s, 4.0)
    return {
        "__rate_interval": f"{rate_interval:g}s",
        "__interval": f"{scrape_interval_s:g}s",
        "__range": "5m",
    }


def api_get(base_url: str, path: str, params: Sequence[tuple[str, str]]) -> Any:
    """GET a Prometheus API endpoint; return `data`, raise RuntimeError unless `success`."""
    url = f"{base_url.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            raw = response.read()
    except urllib.error.HTTPError as error:  # Prometheus explains bad queries in a JSON body
        raw = error.read()
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as error:
        raise RuntimeError(f"{url}: not a Prometheus API answer: {raw[:200]!r}") from error
    if body.get("status") != "success":
        raise RuntimeError(f"{path} {dict(params)}: {body.get('errorType')}: {body.get('error')}")
    return body["data"]


def instant_query(base_url: str, expr: str) -> list[dict[str, Any]]:
    """The series an instant query returns (empty list when none)."""
    data = api_get(base_url, "/api/v1/query", [("query", expr)])
    result: list[dict[str, Any]] = data["result"]
    return result


def label_values(base_url: str, metric: str, label: str) -> list[str]:
    """What Grafana's `label_values(metric, label)` lists."""
    values: list[str] = api_get(base_url, f"/api/v1/label/{label}/values", [("match[]", metric)])
    return sorted(values)


def check_dashboards(
    base_url: str, dashboards: Mapping[str, Mapping[str, Any]], macros: Mapping[str, str]
) -> list[tuple[PanelQuery, str, int]]:
    """Evaluate every panel query with template variables set to "All" (`.*`).

    Returns (query, expression sent, number of series) for each.
    """
    results = []
    for name, dashboard in dashboards.items():
        values = dict(macros)
        values.update({variable.name: ".*" for variable in variable_queries(dashboard)})
        for query in panel_queries(dashboard, name):
            expr = substitute(query.expr, values)
            results.append((query, expr, len(instant_query(base_url, expr))))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:9090", help="Prometheus base URL")
    parser.add_argument("--dashboards", type=Path, default=DASHBOARD_DIR, help="directory of dashboard JSON files")
    parser.add_argument("--scrape-interval", type=float, default=5.0, help="Prometheus scrape interval in seconds")
    args = parser.parse_args(argv)
    results = check_dashboards(args.url, load_dashboards(args.dashboards), macro_values(args.scrape_interval))
    empty = 0
    for query, expr, series in results:
        empty += series == 0
        status = f"{series:3d} series" if series else "  NO DATA "
        print(f"{status}  {query.panel} [{query.ref_id}]: {expr}")
    print(f"{len(results) - empty}/{len(results)} queries returned data")
    return 1 if empty else 0


if __name__ == "__main__":
    sys.exit(main())
