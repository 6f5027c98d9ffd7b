"""The read-only status page at ``/`` on the daemon's HTTP listener: plain HTML, inline SVG, nothing fetched.

Every certificate: its domains, issuer, expiry, what each endpoint serves (current, stale, unreachable) with the
reason code of its last probe, the next action and why, the last failures, and a timeline drawn as an SVG
chart: each installed version's validity as a bar, renewals and alerts as marks, and "now".  The
``[[watch]]`` endpoints follow.  No JavaScript, no stylesheet or font from elsewhere: the page works offline
and under a ``default-src 'none'`` Content-Security-Policy (:data:`CONTENT_SECURITY_POLICY`).

Pure: :func:`render_page` turns plain values (gathered by :meth:`certkeeper.app.App.status_views`) and ``now``
into the page.  The listener's basic auth (``metrics_basic_auth_file``) guards it as it guards ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from html import escape

from certkeeper.values import frozen

CONTENT_TYPE = "text/html; charset=utf-8"
# Inline styles only; the SVG is inline markup; nothing else loads.
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"

_WIDTH, _ROW, _LEFT, _RIGHT = 900, 22, 190, 20


@frozen
class EndpointView:
    endpoint: str
    served: str  # "current", "stale", "unreachable", or "watched" for [[watch]] endpoints
    status: str  # OK, WARNING, CRITICAL, UNKNOWN
    reason: str  # the worst finding's code, or "ok"
    message: str
    probed_at: datetime


@frozen
class VersionSpan:
    id: str
    not_before: datetime
    not_after: datetime
    current: bool


@frozen
class Mark:
    """A moment on the timeline: ``kind`` is ``renewal-success``, ``renewal-failure``, ``renewal-rollback`` (or
    another renewal result) or ``alert``."""

    at: datetime
    kind: str
    text: str


@frozen
class CertificateView:
    name: str
    domains: tuple[str, ...]
    issuer: str
    not_after: datetime | None
    next_action: str
    next_reason: str
    failures: int
    last_error: str
    endpoints: tuple[EndpointView, ...]
    versions: tuple[VersionSpan, ...]
    marks: tuple[Mark, ...]


def served_state(status: str, fingerprint: str, stale: bool, current: frozenset[str] | None) -> str:
    """What a managed endpoint's last probe means next to what is installed (as ``certkeeper status`` says)."""
    if status != "OK" and not fingerprint:
        return "unreachable"
    if current is not None and fingerprint in current and not stale:
        return "current"
    return "stale"


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _days(delta: timedelta) -> str:
    days = delta.total_seconds() / 86400
    return f"{days:.0f} days" if abs(days) >= 2 else f"{delta.total_seconds() / 3600:.0f} hours"


def timeline_svg(view: CertificateView, now: datetime) -> str:
    """Validity bars (one row per version, newest at the top), renewal and alert marks on the row below, and a
    line at ``now``.  Every element carries ``data-*`` attributes naming what it draws."""
    moments = [now - timedelta(days=7), now + timedelta(days=7)]
    moments += [m for v in view.versions for m in (v.not_before, v.not_after)] + [m.at for m in view.marks]
    start, end = min(moments), max(moments)
    span = max((end - start).total_seconds(), 1.0)
    usable = _WIDTH - _LEFT - _RIGHT

    def x(moment: datetime) -> float:
        return round(_LEFT + usable * (moment - start).total_seconds() / span, 1)

    versions = sorted(view.versions, key=lambda v: (v.not_before, v.id), reverse=True)
    height = _ROW * (len(versions) + 2) + 24
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" role="img" width="{_WIDTH}" '
             f'height="{height}" viewBox="0 0 {_WIDTH} {height}" data-certificate="{escape(view.name)}">',
             f"<title>{escape(view.name)}: validity, renewals and alerts</title>"]
    for row, version in enumerate(versions):
        y = 8 + row * _ROW
        left, right = x(version.not_before), x(version.not_after)
        fill = "#2e7d32" if version.current else "#9e9e9e"
        parts.append(
            f'<g class="validity" data-version="{escape(version.id)}" data-current="{str(version.current).lower()}">'
            f'<text x="4" y="{y + 13}" font-size="11">{escape(version.id[:30])}</text>'
            f'<rect x="{left}" y="{y}" width="{max(right - left, 1.0)}" height="{_ROW - 6}" fill="{fill}" rx="3">'
            f"<title>{escape(version.id)}: {_when(version.not_before)} to {_when(version.not_after)}</title>"
            f"</rect></g>")
    y = 8 + len(versions) * _ROW + _ROW // 2
    parts.append(f'<text x="4" y="{y + 4}" font-size="11">events</text>')
    for mark in sorted(view.marks, key=lambda m: m.at):
        cx = x(mark.at)
        colour = {"renewal-success": "#1565c0", "alert": "#ef6c00"}.get(mark.kind, "#c62828")
        shape = (f'<circle cx="{cx}" cy="{y}" r="5" fill="{colour}">' if mark.kind.startswith("renewal")
                 else f'<path d="M{cx} {y - 6} L{cx + 6} {y} L{cx} {y + 6} L{cx - 6} {y} Z" fill="{colour}">')
        closing = "</circle>" if mark.kind.startswith("renewal") else "</path>"
        parts.append(f'<g class="mark" data-kind="{escape(mark.kind)}">{shape}'
                     f"<title>{_when(mark.at)} {escape(mark.text)}</title>{closing}</g>")
    now_x = x(now)
    axis = height - 10
    parts.append(f'<line class="now" x1="{now_x}" y1="0" x2="{now_x}" y2="{axis - 8}" stroke="#000" '
                 f'stroke-dasharray="4 3"/>')
    parts.append(f'<text x="{_LEFT}" y="{axis}" font-size="10">{_when(start)[:10]}</text>')
    parts.append(f'<text x="{_WIDTH - _RIGHT}" y="{axis}" font-size="10" text-anchor="end">{_when(end)[:10]}</text>')
    parts.append(f'<text x="{now_x}" y="{axis}" font-size="10" text-anchor="middle">now</text>')
    parts.append("</svg>")
    return "".join(parts)


def _endpoint_rows(endpoints: Sequence[EndpointView]) -> str:
    if not endpoints:
        return '<p class="none">no endpoints probed yet</p>'
    rows = "".join(
        f'<tr class="endpoint status-{escape(e.status.lower())}" data-endpoint="{escape(e.endpoint)}" '
        f'data-served="{escape(e.served)}" data-status="{escape(e.status)}">'
        f"<td>{escape(e.endpoint)}</td><td>{escape(e.served)}</td><td>{escape(e.status)}</td>"
        f"<td>{escape(e.reason)}</td><td>{escape(e.message)}</td><td>{_when(e.probed_at)}</td></tr>"
        for e in endpoints)
    return ("<table><tr><th>endpoint</th><th>serves</th><th>status</th><th>reason</th><th>last probe said</th>"
            f"<th>probed</th></tr>{rows}</table>")


def _certificate(view: CertificateView, now: datetime) -> str:
    expiry = (f"expires {_when(view.not_after)} ({_days(view.not_after - now)} left)" if view.not_after
              else "not installed")
    failures = [m for m in sorted(view.marks, key=lambda m: m.at, reverse=True) if m.kind != "renewal-success"][:5]
    failure_items = "".join(f"<li>{_when(m.at)} {escape(m.kind)}: {escape(m.text)}</li>" for m in failures)
    last_error = (f'<p class="last-error">failing ({view.failures} in a row): {escape(view.last_error)}</p>'
                  if view.failures else "")
    return (f'<section class="certificate" id="certificate-{escape(view.name)}" data-name="{escape(view.name)}">'
            f"<h2>{escape(view.name)}</h2>"
            f'<p>{escape(" ".join(view.domains))} &middot; issuer {escape(view.issuer)} &middot; {expiry}</p>'
            f'<p class="next">next: {escape(view.next_action)} ({escape(view.next_reason)})</p>{last_error}'
            f"{_endpoint_rows(view.endpoints)}"
            f"{timeline_svg(view, now)}"
            + (f'<h3>last failures and alerts</h3><ul class="failures">{failure_items}</ul>' if failures else "")
            + "</section>")


_STYLE = """
body{font-family:sans-serif;margin:1.5em;color:#212121}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left;font-size:.9em}
.status-ok td:nth-child(3){color:#2e7d32}.status-warning td:nth-child(3){color:#ef6c00}
.status-critical td:nth-child(3),.status-unknown td:nth-child(3),.last-error{color:#c62828}
section{border-top:2px solid #eee;padding-top:.5em}svg.timeline{display:block;margin:.5em 0}
"""


def render_page(certificates: Sequence[CertificateView], watched: Sequence[tuple[str, Sequence[EndpointView]]],
                now: datetime, *, title: str = "certkeeper") -> str:
    """The whole page: one section per certificate, then one per ``[[watch]]`` entry."""
    sections = "".join(_certificate(view, now) for view in certificates)
    watch = "".join(
        f'<section class="watch" data-name="{escape(name)}"><h2>watched: {escape(name)}</h2>'
        f"{_endpoint_rows(endpoints)}</section>" for name, endpoints in watched)
    return ("<!DOCTYPE html>\n"
            f'<html lang="en"><head><meta charset="utf-8"><title>{escape(title)} status</title>'
            f"<style>{_STYLE}</style></head><body>"
            f"<h1>{escape(title)} status</h1><p>as of {_when(now)} &middot; "
            f'{len(certificates)} certificates &middot; <a href="/metrics">metrics</a></p>'
            f"{sections}{watch}</body></html>\n")
