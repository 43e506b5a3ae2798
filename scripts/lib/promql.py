#!/usr/bin/env python3
"""Prints every PromQL expression of the Grafana dashboards and the alert rules.

    scripts/lib/promql.py [--only dashboards|rules] [--format lines|rules]
                          [--dashboard FILE ...] [--rules FILE ...]

Default files: deploy/grafana/dashboards/*.json and deploy/prometheus/alerts.yml.

`--format lines` (the default) prints one JSON object a line:
    {"source": "dashboard: <panel title> / <refId>" | "rule: <alertname>",
     "expr": "...", "needs_data": true|false}
A dashboard's expression must return data on a deployment that has seen
traffic; an alert's need only parse (it returns nothing while all is well).

`--format rules` prints one Prometheus rule file (JSON, which YAML accepts)
with each expression as a recording rule, for `promtool check rules` to parse.

Grafana's own variables become fixed windows, since Prometheus knows nothing
of them; any other `$variable` is an error rather than a silent guess.
Dashboards need only the standard library. Rule files are YAML: they need
PyYAML, imported only when rules are asked for.
"""

import argparse
import glob
import json
import os
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# Grafana's variables, as a 5 s scrape interval and a one-hour view make them.
# $__rate_interval is at least four scrapes; $__range is the default time range.
GRAFANA_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def substitute(expr, where):
    def replace(match):
        name = match.group(1) or match.group(2)
        if name not in GRAFANA_VARIABLES:
            sys.exit(f"promql.py: {where}: unknown variable ${name}")
        return GRAFANA_VARIABLES[name]

    return VARIABLE.sub(replace, expr)


def panels(items):
    """Every panel, rows' collapsed children included."""
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def dashboard_exprs(path):
    with open(path, encoding="utf-8") as f:
        dashboard = json.load(f)
    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            expr = target.get("expr", "").strip()
            if not expr or target.get("hide"):
                continue
            source = f"dashboard: {panel.get('title', '?')} / {target.get('refId', '?')}"
            yield {"source": source, "expr": substitute(expr, source), "needs_data": True}


def rule_exprs(path):
    try:
        import yaml
    except ImportError:
        sys.exit(
            "promql.py: reading rule files needs PyYAML, which this python3 lacks: "
            "pip install pyyaml, or run with --only dashboards"
        )
    with open(path, encoding="utf-8") as f:
        document = yaml.safe_load(f)
    for group in document.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            kind = "rule" if "alert" in rule else "record"
            yield {"source": f"{kind}: {name}", "expr": rule["expr"].strip(), "needs_data": False}


def as_rule_file(entries):
    rules = [
        # A valid metric name per expression; the source stays as a label for the reader.
        {"record": f"monitoring_check_expr_{i}", "expr": e["expr"], "labels": {"source": e["source"]}}
        for i, e in enumerate(entries, 1)
    ]
    return json.dumps({"groups": [{"name": "expressions", "rules": rules}]}, indent=2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["dashboards", "rules"])
    parser.add_argument("--format", choices=["lines", "rules"], default="lines")
    parser.add_argument("--dashboard", action="append", metavar="FILE")
    parser.add_argument("--rules", action="append", metavar="FILE")
    args = parser.parse_args()

    dashboards = args.dashboard or sorted(glob.glob(os.path.join(ROOT, "deploy/grafana/dashboards/*.json")))
    rule_files = args.rules or [os.path.join(ROOT, "deploy/prometheus/alerts.yml")]
    entries = []
    if args.only != "rules":
        for path in dashboards:
            entries.extend(dashboard_exprs(path))
    if args.only != "dashboards":
        for path in rule_files:
            entries.extend(rule_exprs(path))
    if not entries:
        sys.exit("promql.py: no expressions found")

    if args.format == "rules":
        print(as_rule_file(entries))
    else:
        for entry in entries:
            print(json.dumps(entry, ensure_ascii=False))


if __name__ == "__main__":
    main()
