"""Conformance reports: the summary table, JSON, Markdown and a self-contained HTML page.

A report is one JSON-able dict (see :func:`build_report`); every writer renders that dict, so
the committed JSON and the human-readable pages never disagree.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SUITES = ("readiness", "scenarios", "learning")


def build_report(
    target: str,
    *,
    name: str,
    command: Sequence[str],
    peer: dict[str, Any] | None = None,
    readiness: dict[str, Any] | None = None,
    scenarios: list[dict[str, Any]] | None = None,
    learning: dict[str, Any] | None = None,
    started: str = "",
    seconds: float = 0.0,
) -> dict[str, Any]:
    """One report; suites that were not run are ``None``."""
    from d2tls import __version__

    counts = None
    if scenarios is not None:
        counts = {v: sum(1 for s in scenarios if s["verdict"] == v) for v in _VERDICTS}
    return {
        "target": target,
        "name": name,
        "command": list(command),
        "peer": peer or {},
        "d2tls_version": __version__,
        "started": started,
        "seconds": round(seconds, 1),
        "readiness": readiness,
        "scenarios": scenarios,
        "scenario_counts": counts,
        "learning": learning,
    }


_VERDICTS = ("pass", "fail", "inconclusive")


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(suite, result, details) rows of the summary table."""
    rows: list[tuple[str, str, str]] = []
    readiness = report.get("readiness")
    if readiness is not None:
        rows.append(("D2TLS readiness", readiness["verdict"], readiness["reason"]))
    counts = report.get("scenario_counts")
    if counts is not None:
        failed = [s["id"] for s in report["scenarios"] if s["verdict"] == "fail"]
        unsure = [s["id"] for s in report["scenarios"] if s["verdict"] == "inconclusive"]
        details = "; ".join(
            part
            for part in (
                f"fail: {', '.join(failed)}" if failed else "",
                f"inconclusive: {', '.join(unsure)}" if unsure else "",
            )
            if part
        )
        result = f"{counts['pass']} pass, {counts['fail']} fail, {counts['inconclusive']} inconc."
        rows.append(("RFC scenarios", result, details or "all pass"))
    learning = report.get("learning")
    if learning is not None:
        result = learning["verdict"]
        details = (
            f"{learning['states']} states (spec {learning['spec_states']}), "
            f"{learning['queries']} queries, {learning['seconds']} s"
        )
        if learning["differences"]:
            first = learning["differences"][0]
            details += f"; first difference after {' '.join(first['inputs'])}"
        rows.append(("State machine", result, details))
    return rows


def summary_table(report: dict[str, Any]) -> str:
    """The plain-text summary printed by ``d2tls conformance``."""
    rows = [("suite", "result", "details"), *summary_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"conformance of {report['target']} ({report['name']})"]
    for index, (suite, result, details) in enumerate(rows):
        lines.append(f"  {suite:<{widths[0]}}  {result:<{widths[1]}}  {details}")
        if index == 0:
            lines.append(f"  {'-' * widths[0]}  {'-' * widths[1]}  {'-' * 7}")
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(report: dict[str, Any], *, heading: int = 2, image_dir: str = "") -> str:
    """A Markdown section for one report (image paths relative to ``image_dir``)."""
    h = "#" * heading
    out = [f"{h} {report['name']} ({report['target']})", ""]
    peer = report.get("peer") or {}
    if peer:
        out.append(f"- version: {peer.get('version', '?')}")
        if peer.get("command"):
            out.append(f"- server command: `{' '.join(peer['command'])}`")
        if peer.get("network_namespace"):
            out.append("- run inside a private network namespace (its only interface: lo)")
        out.append("- readiness: one run against the server as it runs (no restart between checks)")
        if peer.get("restarted_per_query"):
            learned = peer.get("restarted_per_learning_query", True)
            out.append(
                "- the server is restarted before every scenario"
                + (" and learning query" if learned else "")
            )
    out.append(f"- conformance command: `{' '.join(report['command'])}`")
    out += ["", "| suite | result | details |", "|---|---|---|"]
    out += [f"| {_md(a)} | {_md(b)} | {_md(c)} |" for a, b, c in summary_rows(report)]
    readiness = report.get("readiness")
    if readiness is not None:
        out += ["", f"{h}# Readiness: {readiness['verdict']}", ""]
        out += ["| check | RFC | status | observed |", "|---|---|---|---|"]
        for c in readiness["checks"]:
            title = c["title"] + ("" if c["required"] else " (informative)")
            out.append(f"| {_md(title)} | {_md(c['rfc'])} | {c['status']} | {_md(c['detail'])} |")
    scenarios = report.get("scenarios")
    if scenarios is not None:
        out += ["", f"{h}# Scripted scenarios", ""]
        out += ["| scenario | RFC | verdict | observed |", "|---|---|---|---|"]
        for s in scenarios:
            observed = "; ".join(s["observed"])
            if s["reason"]:
                observed += f" — {s['reason']}"
            out.append(f"| {_md(s['id'])} | {_md(s['rfc'])} | {s['verdict']} | {_md(observed)} |")
    learning = report.get("learning")
    if learning is not None:
        out += ["", f"{h}# Learned state machine: {learning['verdict']}", ""]
        if learning.get("from_run"):
            out += [f"(Kept from the run started {learning['from_run']}.)", ""]
        out.append(
            f"{learning['states']} states (spec: {learning['spec_states']}), "
            f"{learning['queries']} queries ({learning['steps']} inputs, "
            f"{learning['cache_hits']} cache hits, {learning['nondeterministic_queries']} "
            f"repeated for nondeterminism), {learning['equivalence_rounds']} equivalence rounds, "
            f"{learning['seconds']} s. Inputs: {', '.join(learning['inputs'])}."
            + (
                f" Reset between queries: {learning['reset']}"
                f" ({learning.get('busy_retries', 0)} queries retried for a busy server)."
                if learning.get("reset") and learning["reset"] != "restart"
                else ""
            )
        )
        files = learning.get("files", {})
        for kind in ("learned", "spec"):
            image = files.get(f"{kind}_svg") or files.get(f"{kind}_png")
            if image:
                out += ["", f"![{kind} machine]({image_dir}{image})"]
            elif f"{kind}_dot" in files:
                out += [
                    "",
                    f"{kind} machine: [{files[kind + '_dot']}]({image_dir}{files[kind + '_dot']})",
                ]
        if learning["differences"]:
            out += [
                "",
                "Shortest input sequences where the learned machine and the spec differ:",
                "",
            ]
            out += ["| inputs | spec | learned |", "|---|---|---|"]
            for d in learning["differences"]:
                out.append(
                    f"| {_md(' '.join(d['inputs']))} | {_md(d['expected'][-1])} | "
                    f"{_md(d['observed'][-1])} |"
                )
    return "\n".join(out) + "\n"


def write_html(report: dict[str, Any], path: Path, image_root: Path | None = None) -> None:
    """A self-contained page (images embedded) for one report."""
    esc = html.escape
    parts = [
        "<!doctype html><meta charset='utf-8'>",
        f"<title>d2tls conformance: {esc(report['name'])}</title>",
        "<style>body{font-family:sans-serif;max-width:70em;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;"
        "vertical-align:top;font-size:90%}.pass{background:#dfd}.fail{background:#fdd}"
        ".warn,.inconclusive{background:#ffd}img{max-width:100%}</style>",
        f"<h1>{esc(report['name'])} ({esc(report['target'])})</h1>",
        f"<p><code>{esc(' '.join(report['command']))}</code></p>",
        "<table><tr><th>suite</th><th>result</th><th>details</th></tr>",
    ]
    for suite, result, details in summary_rows(report):
        parts.append(f"<tr><td>{esc(suite)}</td><td>{esc(result)}</td><td>{esc(details)}</td></tr>")
    parts.append("</table>")
    readiness = report.get("readiness")
    if readiness is not None:
        parts.append(f"<h2>Readiness: {esc(readiness['verdict'])}</h2><table>")
        parts.append("<tr><th>check</th><th>RFC</th><th>status</th><th>observed</th></tr>")
        for c in readiness["checks"]:
            parts.append(
                f"<tr class='{c['status']}'><td>{esc(c['title'])}</td><td>{esc(c['rfc'])}</td>"
                f"<td>{c['status']}</td><td>{esc(c['detail'])}</td></tr>"
            )
        parts.append("</table>")
    scenarios = report.get("scenarios")
    if scenarios is not None:
        parts.append("<h2>Scripted scenarios</h2><table>")
        parts.append(
            "<tr><th>scenario</th><th>rule</th><th>script</th><th>verdict</th>"
            "<th>observed</th></tr>"
        )
        for s in scenarios:
            parts.append(
                f"<tr class='{s['verdict']}'><td>{esc(s['id'])}<br>{esc(s['title'])}</td>"
                f"<td>{esc(s['rfc'])}: {esc(s['rule'])}</td>"
                f"<td><code>{'<br>'.join(esc(x) for x in s['script'])}</code></td>"
                f"<td>{s['verdict']}</td><td>{esc('; '.join(s['observed']))} "
                f"{esc(s['reason'])}</td></tr>"
            )
        parts.append("</table>")
    learning = report.get("learning")
    if learning is not None:
        parts.append(f"<h2>State machine: {esc(learning['verdict'])}</h2>")
        for d in learning["differences"]:
            parts.append(
                f"<p><code>{esc(' '.join(d['inputs']))}</code>: spec "
                f"<code>{esc(d['expected'][-1])}</code>, learned "
                f"<code>{esc(d['observed'][-1])}</code></p>"
            )
        files = learning.get("files", {})
        root = image_root or path.parent
        for kind in ("learned", "spec"):
            for suffix, mime in (("svg", "svg+xml"), ("png", "png")):
                image = files.get(f"{kind}_{suffix}")
                if image and (root / image).exists():
                    data = base64.b64encode((root / image).read_bytes()).decode()
                    parts.append(
                        f"<h3>{kind}</h3><img alt='{kind}' src='data:image/{mime};base64,{data}'>"
                    )
                    break
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")


__all__ = [
    "SUITES",
    "build_report",
    "markdown",
    "summary_rows",
    "summary_table",
    "write_html",
    "write_json",
]
