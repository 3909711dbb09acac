"""`ferry report`: DORA metrics, stage times and SLOs over a window, as tables, JSON or a wall-screen HTML page.

It reads visibility only (the `ferry.release` memo each Release leaves when it ends, and the ReleaseStage search
attribute of running ones): no history is fetched or replayed, so a report over thousands of releases costs one
list call. The numbers come from `common.dora.compute`; this module queries, formats and renders.
"""

from __future__ import annotations

import argparse
import html
import re
import sys
import textwrap
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowExecution, WorkflowExecutionStatus

from common.config import FerryConfig
from common.dora import (
    INFRASTRUCTURE_ERROR_TYPES,
    DoraMetrics,
    Report,
    SloResult,
    Window,
    compute,
    record_from_dict,
)
from starters.common import OK, CommandError, client_for, print_json
from workflows import search
from workflows.types import RELEASE_RECORD_MEMO, ReleaseRecord

JSON_SCHEMA = "ferry.report/v1"

_INFRA = textwrap.fill(
    ", ".join(sorted(INFRASTRUCTURE_ERROR_TYPES)) + ")",
    width=112,
    initial_indent=" " * 34 + "(",
    subsequent_indent=" " * 35,
)
DESCRIPTION = f"""\
DORA metrics, stage times and SLOs of the releases in a window, read from Temporal visibility (the
`{RELEASE_RECORD_MEMO}` memo every Release leaves when it ends). Each figure is per environment, per service and
environment, and over all environments; the four big numbers are for production (or --environment).

DORA metrics (an environment deployment = one release's GitOps move into one environment):
  deployment frequency   deployments verified in the environment (synced, rolled out, E2E passed) per day
  lead time for changes  commit time -> verified in the environment; median and p95
  change failure rate    deployments that failed verification or were rolled back / deployments started
  time to restore        failed verification -> back healthy on the previous version (median)
  Bands (elite/high/medium/low): the DORA performance clusters of the 2023 Accelerate State of DevOps Report,
  with the gaps between clusters closed at the faster cluster's bound:
    frequency: elite >= 1/day, high >= 1/week, medium >= 1/month; lead time (median): elite < 1 day,
    high < 1 week, medium < 1 month; failure rate: elite <= 5%, high <= 10%, medium <= 15%;
    time to restore (median): elite < 1 hour, high < 1 day, medium < 1 week; anything else is low.

Stage times: per stage (ci, replicate:<site>, deploy:<env>, e2e:<env>, ...) count, median and p95 over the
releases that ended in the window; gate:<env> is time spent waiting for approval.

SLOs (platform architecture 10.3):
  deployment success rate > 99%   verified deployments / deployments that reached a verdict
  p95 deploy time < 10 min        GitOps commit -> verified, per environment deployment
  pipeline availability > 99.5%   CI runs that reached a verdict (passed, or the change failed a check) /
                                  CI runs; a run is unavailable when CI failed with an infrastructure error
{_INFRA}

Events count in the window by their own time (a release started earlier that deployed inside the window
counts); outcomes, stage times and CI runs count in the window their release ended in. Running releases are
listed, not counted as failures. --since/--until take a duration back from now (30m, 24h, 7d, 2w) or an ISO
date/time (UTC unless it has an offset). Percentiles: median, and nearest-rank p95.
"""

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([mhdw])$")
_UNITS = {"m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
BAND_COLOURS = {"elite": "#2ecc71", "high": "#3498db", "medium": "#f1c40f", "low": "#e74c3c", None: "#7f8c8d"}


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register `ferry report` on the CLI's subparsers."""
    p = sub.add_parser(
        "report",
        help="DORA metrics, stage times and SLOs over a window (--json, --html for a wall screen)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--since", default="7d", help="start of the window: 7d, 24h, 30m, 2w or ISO (default 7d)")
    p.add_argument("--until", help="end of the window (exclusive), same forms (default now)")
    p.add_argument("--service", help="only releases that include this service, and its deployments")
    p.add_argument("--environment", help="only this environment's deployments and stages")
    p.add_argument("--json", action="store_true", help=f"machine-readable output (schema {JSON_SCHEMA})")
    p.add_argument("--html", type=Path, metavar="FILE", help="also write a self-contained HTML page with charts")
    return p


# --- arguments ---


def parse_when(text: str, now: datetime, flag: str) -> datetime:
    """`7d`/`24h`/`30m`/`2w` back from now, or an ISO 8601 date or time (naive = UTC); USAGE otherwise."""
    value = text.strip()
    match = _RELATIVE.match(value)
    if match:
        return now - timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(
            f"{flag} '{text}': give a duration back from now (30m, 24h, 7d, 2w) or an ISO date/time "
            "(2025-05-01 or 2025-05-01T08:00:00Z)"
        ) from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def window_from_args(args: argparse.Namespace, now: datetime) -> Window:
    """The report window; an empty or inverted one is a usage error."""
    since = parse_when(args.since or "7d", now, "--since")
    until = parse_when(args.until, now, "--until") if args.until else now
    if since >= until:
        raise CommandError(f"--since {since.isoformat()} is not before --until {until.isoformat()}")
    return Window(since, until)


def _check_filters(cfg: FerryConfig, args: argparse.Namespace) -> None:
    if args.service and args.service not in cfg.services:
        raise CommandError(f"unknown service '{args.service}'; ferry.yaml defines {', '.join(sorted(cfg.services))}")
    if args.environment and args.environment not in cfg.environments:
        raise CommandError(
            f"unknown environment '{args.environment}'; ferry.yaml defines {', '.join(cfg.environments)}"
        )


# --- visibility ---


def _rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def visibility_query(window: Window) -> str:
    """Releases that may have an event in the window: started before its end, and ended after its start or
    still running. (A bare `StartTime >= since` would miss a release that waited days at a gate and deployed
    inside the window.)"""
    return (
        f"WorkflowType = 'Release' AND StartTime < '{_rfc3339(window.until)}' "
        f"AND (CloseTime >= '{_rfc3339(window.since)}' OR ExecutionStatus = 'Running')"
    )


def _release_id(workflow_id: str) -> str:
    """`release/{repo}/{sha12}` -> `{repo}-{sha12}` (the release id the CLI prints)."""
    parts = workflow_id.split("/")
    return f"{parts[1]}-{parts[2]}" if len(parts) == 3 and parts[0] == "release" else workflow_id


def _iso(at: datetime | None) -> str:
    return at.astimezone(UTC).isoformat() if at else ""


async def record_of(wf: WorkflowExecution) -> tuple[ReleaseRecord, bool]:
    """The release's record from its memo, or one made from visibility (running, or ended without a memo:
    terminated, or from before records existed); the flag says whether the memo had one."""
    running = wf.status == WorkflowExecutionStatus.RUNNING
    data = await wf.memo_value(RELEASE_RECORD_MEMO, None)
    if isinstance(data, dict):
        record = record_from_dict(data)
        record.release_id = record.release_id or _release_id(wf.id)
        if not running and (record.outcome == "running" or not record.ended_at):
            # A memo written while running, then the workflow was ended from outside (terminate, timeout).
            record.outcome = f"workflow_{wf.status.name.lower() if wf.status else 'unknown'}"
            record.ended_at = _iso(wf.close_time)
        return record, True
    attrs = wf.typed_search_attributes
    record = ReleaseRecord(
        release_id=_release_id(wf.id),
        commit=attrs.get(search.COMMIT_SHA) or "",
        branch=attrs.get(search.BRANCH) or "",
        services=list(attrs.get(search.SERVICES) or []),
        outcome="running" if running else f"workflow_{wf.status.name.lower() if wf.status else 'unknown'}",
        committed_at="",
        started_at=_iso(wf.start_time),
        ended_at="" if running else _iso(wf.close_time),
    )
    return record, running


async def fetch_records(client: Client, window: Window) -> tuple[list[ReleaseRecord], dict[str, str], list[str]]:
    """Every Release that may touch the window: records, the current stage of running ones, and the ids of
    ended releases that left no record (counted under `workflow_<status>`)."""
    records: list[ReleaseRecord] = []
    stages: dict[str, str] = {}
    unrecorded: list[str] = []
    async for wf in client.list_workflows(visibility_query(window)):
        record, recorded = await record_of(wf)
        records.append(record)
        if wf.status == WorkflowExecutionStatus.RUNNING:
            stages[record.release_id] = wf.typed_search_attributes.get(search.RELEASE_STAGE) or ""
        elif not recorded:
            unrecorded.append(record.release_id)
    return records, stages, unrecorded


# --- the command ---


async def report(cfg: FerryConfig, args: argparse.Namespace, now: datetime | None = None) -> int:
    """`ferry report`: compute over visibility, print tables or JSON, optionally write the HTML page."""
    window = window_from_args(args, now or datetime.now(UTC))
    _check_filters(cfg, args)
    client = await client_for(cfg)
    records, stages, unrecorded = await fetch_records(client, window)
    order = list(cfg.environments)
    result = compute(
        records,
        window,
        service=args.service,
        environment=args.environment,
        headline_environment=args.environment or order[-1],
        environment_order=order,
        current_stages=stages,
    )
    if args.html:
        try:
            args.html.write_text(render_html(result, unrecorded), encoding="utf-8")
        except OSError as e:
            raise CommandError(f"--html {args.html}: cannot write: {e.strerror}") from None
        print(f"report written to {args.html}", file=sys.stderr)
    if args.json:
        print_json(to_json(result, unrecorded))
    else:
        print(render_text(result, unrecorded))
    return OK


def to_json(result: Report, unrecorded: list[str]) -> dict[str, Any]:
    """The stable machine schema: `schema`, then the Report's fields (see common/dora.py), then `unrecorded`."""
    return {"schema": JSON_SCHEMA, **asdict(result), "unrecorded": unrecorded}


# --- formatting ---


def duration(seconds: float | None) -> str:
    """42s, 12m 3s, 2h 10m, 26h 5m, 3d 4h; '-' when unknown."""
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s" if s % 60 else f"{s // 60}m"
    if s < 2 * 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def percent(ratio: float | None) -> str:
    """9.1%; '-' when unknown."""
    return "-" if ratio is None else f"{ratio * 100:.1f}%".replace(".0%", "%")


def _band(band: str | None) -> str:
    return band or "n/a"


def slo_value(slo: SloResult) -> str:
    """An SLO's value in its unit."""
    return duration(slo.value) if slo.unit == "seconds" else percent(slo.value)


def slo_target(slo: SloResult) -> str:
    """An SLO's target, e.g. '> 99%' or '< 10m'."""
    return f"{slo.comparison} {duration(slo.target) if slo.unit == 'seconds' else percent(slo.target)}"


def slo_verdict(slo: SloResult) -> str:
    """met / MISSED / no data."""
    return "no data" if slo.met is None else ("met" if slo.met else "MISSED")


def _headline_rows(m: DoraMetrics) -> list[tuple[str, str, str]]:
    f, lt, cfr, ttr = m.deployment_frequency, m.lead_time, m.change_failure_rate, m.time_to_restore
    return [
        ("Deployment frequency", f"{f.per_day:.2f}/day ({f.deployments} deployments)", _band(f.band)),
        (
            "Lead time for changes",
            f"median {duration(lt.median_seconds)}, p95 {duration(lt.p95_seconds)} ({lt.samples})",
            _band(lt.band),
        ),
        ("Change failure rate", f"{percent(cfr.rate)} ({cfr.failed} of {cfr.started})", _band(cfr.band)),
        (
            "Time to restore",
            f"median {duration(ttr.median_seconds)} ({ttr.samples} restored, {ttr.unrestored} not yet)",
            _band(ttr.band),
        ),
    ]


def _metric_row(label: str, m: DoraMetrics) -> str:
    f, lt, cfr, ttr = m.deployment_frequency, m.lead_time, m.change_failure_rate, m.time_to_restore
    return (
        f"  {label:<28} {f.deployments:>7} {f.per_day:>8.2f} {duration(lt.median_seconds):>10} "
        f"{duration(lt.p95_seconds):>10} {percent(cfr.rate):>7} {duration(ttr.median_seconds):>10}  "
        f"{_band(f.band)}/{_band(lt.band)}/{_band(cfr.band)}/{_band(ttr.band)}"
    )


def render_text(r: Report, unrecorded: list[str] | None = None) -> str:
    """Readable tables for the terminal."""
    filters = f"service={r.service or 'all'} environment={r.environment or 'all'}"
    lines = [f"Ferry report {r.since} .. {r.until} ({r.days:.1f} days)  {filters}", ""]
    lines.append(f"DORA metrics: {r.headline_environment}  (bands: DORA 2023 performance clusters; see --help)")
    lines += [f"  {name:<22} {value:<54} {band}" for name, value, band in _headline_rows(r.headline)]
    lines += ["", "By environment and service"]
    lines.append(
        f"  {'SCOPE':<28} {'DEPLOYS':>7} {'PER DAY':>8} {'LEAD MED':>10} {'LEAD P95':>10} {'CFR':>7} "
        f"{'RESTORE':>10}  BANDS (freq/lead/cfr/restore)"
    )
    for env, m in r.environments.items():
        lines.append(_metric_row(env, m))
        for service, per_env in r.services.items():
            if env in per_env:
                lines.append(_metric_row(f"  {service}", per_env[env]))
    lines.append(_metric_row("all environments", r.overall))
    lines += ["", "Stages (releases that ended in the window; gate = waiting for approval)"]
    if r.stages:
        lines.append(f"  {'STAGE':<28} {'COUNT':>6} {'MEDIAN':>10} {'P95':>10}")
        for s in r.stages:
            name = f"{s.stage} (waiting)" if s.gate else s.stage
            lines.append(f"  {name:<28} {s.count:>6} {duration(s.median_seconds):>10} {duration(s.p95_seconds):>10}")
    else:
        lines.append("  none")
    lines += ["", "SLOs"]
    for slo in r.slos:
        lines.append(
            f"  {slo.name:<26} {slo_value(slo):>8}  target {slo_target(slo):<8} {slo_verdict(slo):<8} "
            f"({slo.samples} samples)"
        )
    lines += ["", f"Outcomes ({r.releases} releases ended in the window)"]
    lines += [f"  {outcome:<24} {n}" for outcome, n in r.outcomes.items()] or ["  none"]
    if unrecorded:
        lines.append(f"  ({len(unrecorded)} ended without a {RELEASE_RECORD_MEMO} record: {', '.join(unrecorded)})")
    lines += ["", f"Running ({len(r.running)}, not counted)"]
    lines += [
        f"  {x.release_id:<24} {x.stage or '-':<20} since {x.started_at}  {', '.join(x.services)}" for x in r.running
    ] or ["  none"]
    return "\n".join(lines)


# --- HTML ---


def _style(**overrides: Any) -> Any:
    from pygal.style import Style

    settings: dict[str, Any] = dict(
        background="transparent",
        plot_background="transparent",
        foreground="#ecf0f1",
        foreground_strong="#ffffff",
        foreground_subtle="#5d6d7e",
        colors=("#3498db", "#2ecc71", "#e67e22", "#9b59b6", "#1abc9c", "#e74c3c", "#f1c40f"),
        font_family="system-ui, sans-serif",
        label_font_size=14,
        major_label_font_size=14,
        legend_font_size=16,
        title_font_size=20,
        value_font_size=14,
        value_label_font_size=14,
    )
    return Style(**(settings | overrides))


def _svg(chart: Any) -> str:
    """The chart as inline SVG with nothing that points off the machine: js=[] drops pygal's remote tooltip
    script; its inline config script (only read by that script) and its comments (its home-page URLs) are cut."""
    svg = chart.render(is_unicode=True)
    svg = re.sub(r"<script\b.*?</script>", "", svg, flags=re.DOTALL | re.IGNORECASE)
    return re.sub(r"<!--.*?-->", "", svg, flags=re.DOTALL)


def _config(**kw: Any) -> dict[str, Any]:
    return {
        "js": [],
        "disable_xml_declaration": True,
        "style": _style(),
        "width": 900,
        "height": 420,
        "legend_at_bottom": True,
        "print_values": False,
        **kw,
    }


def slo_gauge(slo: SloResult) -> Any:
    """A half-circle gauge of one SLO, green when met, red when missed, grey without data; a time SLO's dial
    runs to twice its target (or the value, if longer)."""
    import pygal

    colour = {True: "#2ecc71", False: "#e74c3c", None: "#7f8c8d"}[slo.met]
    style = _style(colors=(colour,), value_colors=("#ffffff",), value_font_size=40, title_font_size=22)
    gauge = pygal.SolidGauge(
        **_config(title=slo.name.replace("_", " "), style=style, width=400, height=300, show_legend=False),
        inner_radius=0.72,
        half_pie=True,
    )
    if slo.unit == "seconds":
        limit = max(2 * slo.target, slo.value or 0.0) / 60
        value = None if slo.value is None else round(slo.value / 60, 1)
        gauge.add(slo.name, [{"value": value, "max_value": round(limit, 1)}], formatter=lambda x: f"{x:g} min")
    else:
        value = None if slo.value is None else round(slo.value * 100, 2)
        gauge.add(slo.name, [{"value": value, "max_value": 100}], formatter=lambda x: f"{x:g}%")
    return gauge


def charts(r: Report) -> dict[str, str]:
    """The page's charts as inline SVG: deployments per day, lead time distribution, stage breakdown, SLOs."""
    import pygal

    out: dict[str, str] = {}
    days = list(r.headline.deployment_frequency.daily) or list(r.overall.deployment_frequency.daily)
    per_day = pygal.StackedBar(
        **_config(title="Deployments per day (verified)", x_label_rotation=45, show_minor_x_labels=len(days) <= 31)
    )
    per_day.x_labels = [d[5:] for d in days]
    for env, m in r.environments.items():
        per_day.add(env, [m.deployment_frequency.daily.get(d, 0) for d in days])
    out["deployments_per_day"] = _svg(per_day)

    lead = pygal.Bar(**_config(title="Lead time for changes: commit -> verified"))
    lead.x_labels = [b.label for b in r.overall.lead_time.histogram]
    for env, m in r.environments.items():
        lead.add(env, [b.count for b in m.lead_time.histogram])
    out["lead_time"] = _svg(lead)

    stages = pygal.HorizontalBar(
        **_config(title="Stage times, minutes (gates: waiting for approval)", height=max(300, 60 + 42 * len(r.stages)))
    )
    rows = list(reversed(r.stages))  # a horizontal bar chart draws its first label at the bottom
    stages.x_labels = [f"{s.stage} (waiting)" if s.gate else s.stage for s in rows]
    stages.add("median", [round(s.median_seconds / 60, 2) for s in rows])
    stages.add("p95", [round(s.p95_seconds / 60, 2) for s in rows])
    out["stages"] = _svg(stages)

    for slo in r.slos:
        out[f"slo:{slo.name}"] = _svg(slo_gauge(slo))
    return out


_CSS = """
body{margin:0;background:#17202a;color:#ecf0f1;font-family:system-ui,sans-serif}
header{padding:16px 28px;border-bottom:1px solid #2c3e50}
h1{margin:0;font-size:28px} .sub{color:#aab7b8;font-size:15px;margin-top:4px}
.cards{display:grid;grid-template-columns:repeat(4,1fr);gap:18px;padding:22px 28px}
.card{background:#1f2d3a;border-radius:10px;padding:18px 20px;border-top:8px solid var(--band)}
.card .name{font-size:18px;color:#aab7b8} .card .value{font-size:54px;font-weight:700;margin:6px 0}
.card .detail{font-size:15px;color:#d5dbdb} .badge{display:inline-block;padding:3px 12px;border-radius:12px;
background:var(--band);color:#17202a;font-weight:700;text-transform:uppercase;font-size:14px;margin-top:8px}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:18px;padding:0 28px 22px}
.panel{background:#1f2d3a;border-radius:10px;padding:10px} .panel svg{width:100%;height:auto}
table{border-collapse:collapse;width:100%;font-size:15px} th,td{padding:5px 8px;text-align:left}
th{color:#aab7b8;border-bottom:1px solid #2c3e50} .met{color:#2ecc71} .missed{color:#e74c3c}
.gauges{display:flex;justify-content:space-around} .gauges figure{margin:0;flex:1;text-align:center}
figcaption{color:#aab7b8;font-size:15px;margin-bottom:10px}
footer{padding:8px 28px 24px;color:#7f8c8d;font-size:13px}
"""


def _card(name: str, value: str, detail: str, band: str | None) -> str:
    colour = BAND_COLOURS.get(band, BAND_COLOURS[None])
    e = html.escape
    return (
        f'<div class="card" style="--band:{colour}"><div class="name">{e(name)}</div>'
        f'<div class="value">{e(value)}</div><div class="detail">{e(detail)}</div>'
        f'<div class="badge">{e(band or "no data")}</div></div>'
    )


def render_html(r: Report, unrecorded: list[str] | None = None) -> str:
    """One self-contained page for a wall screen: the four DORA numbers with their band, charts (inline SVG,
    no script), SLOs, outcomes and running releases. Opens offline: nothing is loaded from anywhere."""
    e = html.escape
    m = r.headline
    f, lt, cfr, ttr = m.deployment_frequency, m.lead_time, m.change_failure_rate, m.time_to_restore
    cards = "".join(
        [
            _card("Deployment frequency", f"{f.per_day:.2f}/day", f"{f.deployments} verified deployments", f.band),
            _card(
                "Lead time for changes",
                duration(lt.median_seconds),
                f"median; p95 {duration(lt.p95_seconds)}; {lt.samples} deployments",
                lt.band,
            ),
            _card("Change failure rate", percent(cfr.rate), f"{cfr.failed} of {cfr.started} deployments", cfr.band),
            _card(
                "Time to restore",
                duration(ttr.median_seconds),
                f"median; {ttr.samples} restored, {ttr.unrestored} not yet",
                ttr.band,
            ),
        ]
    )
    svg = charts(r)
    gauges = "".join(
        f"<figure>{svg[f'slo:{x.name}']}<figcaption>target {e(slo_target(x))} · {e(slo_verdict(x))} · "
        f"{x.samples} samples</figcaption></figure>"
        for x in r.slos
    )
    slo_rows = "".join(
        f"<tr><td>{e(s.name.replace('_', ' '))}</td><td>{e(slo_value(s))}</td><td>{e(slo_target(s))}</td>"
        f'<td class="{"met" if s.met else "missed" if s.met is False else ""}">{e(slo_verdict(s))}</td>'
        f"<td>{s.samples}</td></tr>"
        for s in r.slos
    )
    outcome_rows = "".join(f"<tr><td>{e(o)}</td><td>{n}</td></tr>" for o, n in r.outcomes.items()) or (
        "<tr><td>none</td><td></td></tr>"
    )
    running_rows = (
        "".join(
            f"<tr><td>{e(x.release_id)}</td><td>{e(x.stage or '-')}</td><td>{e(x.started_at)}</td>"
            f"<td>{e(', '.join(x.services))}</td></tr>"
            for x in r.running
        )
        or '<tr><td colspan="4">none</td></tr>'
    )
    note = (
        f"<p>{len(unrecorded)} release(s) ended without a record: {e(', '.join(unrecorded))}</p>" if unrecorded else ""
    )
    filters = f"service {r.service or 'all'} · environment {r.environment or 'all'}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Ferry delivery report</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body>
<header><h1>Ferry delivery report: {e(r.headline_environment)}</h1>
<div class="sub">{e(r.since)} → {e(r.until)} ({r.days:.1f} days) · {e(filters)} · {r.releases} releases ended,
{len(r.running)} running</div></header>
<section class="cards">{cards}</section>
<section class="grid">
<div class="panel">{svg["deployments_per_day"]}</div>
<div class="panel">{svg["lead_time"]}</div>
<div class="panel">{svg["stages"]}</div>
<div class="panel"><div class="gauges">{gauges}</div>
<table><tr><th>SLO</th><th>value</th><th>target</th><th>verdict</th><th>samples</th></tr>{slo_rows}</table></div>
<div class="panel"><table><tr><th>outcome</th><th>releases</th></tr>{outcome_rows}</table>{note}</div>
<div class="panel"><table><tr><th>running</th><th>stage</th><th>since</th><th>services</th></tr>{running_rows}
</table></div>
</section>
<footer>DORA bands: {e(r.band_source)}. Deployment frequency and lead time count deployments verified in the
window; change failure rate counts deployments started in it. Generated by ferry report.</footer>
</body></html>
"""
