"""The report page: one self-contained HTML file (inline CSS, inline script, data: images).

Nothing is fetched when it opens: a Content-Security-Policy in the page allows only data:
images, the inline style and the one inline script whose hash it names, so the page works
on an air-gapped workstation and would not reach the network even if text slipped through.
Every value from the table or the summary is hostile (DICOM headers, file names): it is
HTML-escaped here, and the paged table is filled by the script with ``textContent`` from
JSON embedded with ``<``, ``>`` and ``&`` escaped.

The script marks the page when it is done (``<html data-report="ready">``, with the number
of pictures and how many decoded), which is what the browser test reads back.
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from dcx.core.drift import BINS, PSI_BINS, PSI_WARN, score_histogram

from .nights import NightDrift, validation_histogram
from .pictures import heatmap_thumbnail, radiograph_thumbnail
from .run_data import RunData

#: Columns of the paged table, in this order, when the result table has them.
TABLE_COLUMNS = ("path", "status", "format", "p_positive", "flagged", "predicted", "threshold_source",
                 "ood_score", "in_distribution", "reason", "study_uid", "series_uid", "sop_uid", "accession",
                 "patient_name", "patient_id")
CARD_FIELDS = (("study_uid", "Study UID"), ("series_uid", "Series UID"), ("sop_uid", "SOP Instance UID"),
               ("accession", "Accession"), ("patient_name", "Patient name"), ("patient_id", "Patient ID"),
               ("format", "Format"))


def render(run: RunData, *, heatmaps=None, nights: list[NightDrift] = (), max_pictures: int = 200,
           thumb_px: int = 128) -> str:
    rows, summary = run.rows, run.summary
    ood_known = "in_distribution" in run.columns
    ood = [r for r in rows if ood_known and r.get("in_distribution") is False]
    flagged = sorted((r for r in rows if r.get("flagged") and not (ood_known and r.get("in_distribution") is False)),
                     key=lambda r: -(r.get("p_positive") or 0.0))
    threshold = _threshold(summary, rows)
    validation = validation_histogram(summary)
    warnings = _warnings(summary, nights, run)

    body = [
        f"<header><h1>dcx screening report</h1><p class=sub>{_e(run.results.name)} &middot; "
        f"{len(rows):,} files &middot; {len(flagged):,} flagged &middot; made "
        f"{datetime.now(tz=timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}</p></header>",
        *(f"<div class=warn role=alert>{w}</div>" for w in warnings),
        NAV,
        _section("Run", _metadata(summary, rows, threshold), "run"),
        _section(f"Flagged images ({len(flagged):,})", _pictures(flagged, heatmaps, max_pictures, thumb_px, ood=False),
                 "flagged"),
        _section("Score distribution", _distribution(rows, threshold, validation), "distribution"),
        _section("Drift across nights", _drift(nights, validation, summary), "drift"),
        _section(f"Out of distribution ({len(ood):,})" if ood_known else "Out of distribution",
                 _pictures(ood, heatmaps, max_pictures, thumb_px, ood=True) if ood_known else
                 "<p class=note>This table has no out-of-distribution columns (<code>ood_score</code>, "
                 "<code>in_distribution</code>): every image was taken as in distribution.</p>", "ood"),
        _section("Counts", _counts(rows, summary), "counts"),
        _section("All files", _table_shell(), "files"),
    ]
    data = _json_for_script(_table_data(rows, run.columns))
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    csp = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'; "
           "base-uri 'none'; form-action 'none'")
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<meta http-equiv=Content-Security-Policy content=\"{csp}\">"
            "<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>dcx report: {_e(run.results.name)}</title><style>{CSS}</style></head><body>"
            + "\n".join(body)
            + f"<script type=application/json id=dcx-rows>{data}</script><script>{SCRIPT}</script></body></html>\n")


# --------------------------------------------------------------------------- sections

NAV = ("<nav><a href='#flagged'>flagged</a><a href='#distribution'>score distribution</a><a href='#drift'>drift</a>"
       "<a href='#ood'>out of distribution</a><a href='#counts'>counts</a><a href='#files'>all files</a></nav>")


def _section(title: str, content: str, anchor: str | None = None) -> str:
    ident = f" id={anchor}" if anchor else ""
    return f"<section{ident}><h2>{_e(title)}</h2>{content}</section>"


def _metadata(summary: dict, rows: list[dict], threshold: float | None) -> str:
    if not summary:
        return "<p class=note>No run summary beside the table: run metadata unknown.</p>"
    model = summary.get("model") if isinstance(summary.get("model"), dict) else {}
    site = summary.get("site") if isinstance(summary.get("site"), dict) else None
    source = summary.get("threshold_source", "card")
    if site:
        how = f"site file: {site.get('policy')} (n = {(site.get('calibration') or {}).get('n')})"
    else:
        how = f"model card: {model.get('threshold_policy', 'not recorded')}"
    sources = Counter(r.get("threshold_source") for r in rows if r.get("threshold_source"))
    if len(sources) > 1:
        how += "; rows mix " + ", ".join(f"{k} ({v})" for k, v in sources.items())
    items = [
        ("Model", f"{_e(model.get('arch', '?'))} &middot; id <code>{_e(summary.get('model_id'))}</code>"),
        ("Classes", ", ".join(_e(c) for c in _list(model.get("classes"))) + f" (positive: {_e(model.get('positive'))})"),
        ("Threshold", f"{_num(threshold, 4)} ({_e(source)}); {_e(how)}"),
        ("Engine", f"<code>{_e(summary.get('engine'))}</code> &middot; {_e(summary.get('backend'))} &middot; "
                   f"{_e(summary.get('precision'))} on {_e(summary.get('device'))}"),
        ("Throughput", f"{_e(summary.get('images_per_s'))} images/s scored, {_e(summary.get('files_per_s'))} files/s; "
                       f"wall {_e(summary.get('wall_s'))} s (setup {_e(summary.get('setup_s'))} s, "
                       f"CPU {_e(summary.get('cpu_s'))} s), batch {_e(summary.get('batch_size'))}"),
        ("This run", f"{_e(summary.get('scored_this_run'))} scored, {_e(summary.get('reused_from_state'))} reused "
                     f"from the state database; {'completed' if summary.get('completed') else 'NOT completed'}"),
        ("Time", f"{_e(summary.get('started'))} to {_e(summary.get('finished'))}"),
        ("dcx", _e(summary.get("dcx_version"))),
    ]
    return "<dl class=meta>" + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _counts(rows: list[dict], summary: dict) -> str:
    status = Counter(r.get("status") for r in rows)
    formats = Counter(r.get("format") or "unknown" for r in rows)
    reasons = Counter(f"{r.get('status')}: {r.get('reason')}" for r in rows if r.get("status") != "ok")
    syntaxes = summary.get("transfer_syntaxes") if isinstance(summary.get("transfer_syntaxes"), dict) else {}
    flagged = sum(bool(r.get("flagged")) for r in rows)
    status_rows = list(status.most_common()) + [("flagged (of ok)", flagged)]
    return ("<div class=grid>" + _count_table("Status", status_rows) + _count_table("Format", formats.most_common())
            + _count_table("Transfer syntax (DICOM decoded this run)", list(syntaxes.items()),
                           "no DICOM decoded this run" if summary else "no run summary")
            + _count_table("Reasons (skipped and error rows)", reasons.most_common(30), "none")
            + "</div>")


def _count_table(title: str, items, empty: str = "none") -> str:
    if not items:
        return f"<table class=counts><caption>{_e(title)}</caption><tr><td class=note>{_e(empty)}</td></tr></table>"
    body = "".join(f"<tr><td>{_e(k)}</td><td class=n>{_e(v)}</td></tr>" for k, v in items)
    return f"<table class=counts><caption>{_e(title)}</caption>{body}</table>"


def _distribution(rows: list[dict], threshold: float | None, validation: list[int] | None) -> str:
    counts = score_histogram(r.get("p_positive") for r in rows if r.get("status") == "ok")
    n = sum(counts)
    if n == 0:
        return "<p class=note>No scored image in this table.</p>"
    legend = ("Bars: share of this table's scored images per 0.01 of p_positive (red at or above the threshold)"
              + ("; line: the model's validation split" if validation else
                 "; the model card holds no validation distribution (trained before dcx stored it)")
              + ". Square-root scale, so small bins stay visible.")
    return _histogram_svg(counts, validation, threshold, "score-histogram") + f"<p class=note>{_e(legend)} n = {n:,}.</p>"


def _histogram_svg(counts: list[int], reference: list[int] | None, threshold: float | None, ident: str) -> str:
    width, height, pad = 700, 200, 28
    shares = _shares(counts)
    ref = _shares(reference) if reference else None
    top = math.sqrt(max(shares + (ref or [])) or 1.0)
    bar = (width - 2 * pad) / BINS

    def y(share: float) -> float:
        return height - pad - (height - 2 * pad) * math.sqrt(share) / top

    parts = [f"<svg id={ident} class=chart viewBox='0 0 {width} {height}' role=img "
             "aria-label='histogram of p_positive'>",
             f"<line x1={pad} y1={height - pad} x2={width - pad} y2={height - pad} class=axis />"]
    for i, share in enumerate(shares):
        if share > 0:
            above = threshold is not None and (i + 0.5) / BINS >= threshold
            parts.append(f"<rect x={pad + i * bar:.1f} y={y(share):.1f} width={bar * 0.85:.1f} "
                         f"height={height - pad - y(share):.1f} class={'hi' if above else 'lo'} />")
    if ref:
        points = " ".join(f"{pad + (i + 0.5) * bar:.1f},{y(s):.1f}" for i, s in enumerate(ref))
        parts.append(f"<polyline points='{points}' class=ref />")
    if threshold is not None and 0 <= threshold <= 1:
        x = pad + threshold * (width - 2 * pad)
        parts.append(f"<line x1={x:.1f} y1={pad - 10} x2={x:.1f} y2={height - pad} class=thr />"
                     f"<text x={x + 4:.1f} y={pad - 2} class=thr>threshold {threshold:.3f}</text>")
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        x = pad + tick * (width - 2 * pad)
        parts.append(f"<text x={x:.1f} y={height - 8} class=tick>{tick:g}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _pictures(rows: list[dict], heatmaps, max_pictures: int, thumb_px: int, *, ood: bool) -> str:
    if not rows:
        return "<p class=note>None.</p>"
    if ood:
        rows = sorted(rows, key=lambda r: -(r.get("ood_score") or 0.0))
    cards = []
    for rank, row in enumerate(rows[:max_pictures], start=1):
        image, why = radiograph_thumbnail(row.get("path") or "", thumb_px)
        shown = [_img(image, why, "radiograph", thumb_px)]
        if not ood:
            heat, why_heat = heatmap_thumbnail(row.get("heatmap"), heatmaps, thumb_px)
            shown.append(_img(heat, why_heat, "heatmap overlay", thumb_px))
        score = f"p {_num(row.get('p_positive'), 4)}"
        if ood:
            score = f"OOD score {_num(row.get('ood_score'), 3)} &middot; {score}"
        fields = "".join(f"<dt>{label}</dt><dd>{_e(row.get(key))}</dd>" for key, label in CARD_FIELDS
                         if row.get(key) is not None)
        cards.append(f"<article class=card><div class=pics>{''.join(shown)}</div><div class=info>"
                     f"<p class=score><b>#{rank}</b> {score}</p><p class=path>{_e(row.get('path'))}</p>"
                     f"<dl>{fields}</dl></div></article>")
    more = ""
    if len(rows) > max_pictures:
        more = (f"<p class=note>{len(rows) - max_pictures:,} more without pictures (limit --max-pictures "
                f"{max_pictures}): see All files, filter '{'out of distribution' if ood else 'flagged'}'.</p>")
    return f"<div class=cards>{''.join(cards)}</div>{more}"


def _img(uri: str | None, why: str | None, alt: str, px: int) -> str:
    if uri is None:
        return f"<div class=nopic style='width:{px}px;height:{px}px'>no {_e(alt)}: {_e(why)}</div>"
    return (f"<figure><img src=\"{uri}\" alt=\"{_e(alt)}\" style='width:{px}px;height:{px}px'>"
            f"<figcaption>{_e(alt)}</figcaption></figure>")


def _drift(nights: list[NightDrift], validation: list[int] | None, summary: dict) -> str:
    intro = (f"Per night (UTC date of the run's start), the images that run scored itself, against the model's "
             f"validation split: PSI on {PSI_BINS} bins of p_positive (tenths), warning above {PSI_WARN} when it "
             f"also passes what chance gives for the two sample sizes at 99% ('by chance': (1/n + 1/m) times the "
             f"99th percentile of chi-square with {PSI_BINS - 1} degrees of freedom); KS is the largest gap between the two cumulative "
             f"distributions, read at the {BINS} bin edges.")
    parts = [f"<p class=note>{_e(intro)}</p>"]
    if validation is None:
        parts.append("<p class=warnnote>The model card holds no validation score distribution (a model trained "
                     "before dcx stored it): flagged rates are shown, PSI and KS cannot be computed. Retrain, or "
                     "compare nights with each other.</p>")
    if not nights:
        parts.append("<p class=note>No night recorded (no run summary).</p>")
        return "".join(parts)
    head = "<tr><th>night</th><th>started</th><th>new images</th><th>flagged</th><th>flagged rate</th>" \
           "<th>PSI</th><th>PSI by chance</th><th>KS</th><th>note</th></tr>"
    body = []
    for d in reversed(nights):
        r = d.record
        status = "<b class=bad>drift</b> " if d.warning else ""
        body.append(f"<tr class={'bad' if d.warning else 'ok'}><td>{_e(r.get('night'))}</td><td>{_e(r.get('started'))}"
                    f"</td><td class=n>{_e(r.get('scored'))}</td><td class=n>{_e(r.get('flagged'))}</td>"
                    f"<td class=n>{_pct(d.flagged_rate)}</td><td class=n>{status}{_num(d.psi, 3)}</td>"
                    f"<td class=n>{_num(d.psi_by_chance, 3)}</td><td class=n>{_num(d.ks, 3)}</td><td>{_e(d.note)}</td></tr>")
    parts.append(_trend_svg(nights))
    parts.append(f"<table class=nights>{head}{''.join(body)}</table>")
    latest = nights[-1]
    if validation is not None and latest.record.get("histogram"):
        parts.append("<p class=note>Latest night (bars) against validation (line):</p>"
                     + _histogram_svg(latest.record["histogram"], validation, latest.record.get("threshold"),
                                      "night-histogram"))
    return "".join(parts)


def _trend_svg(nights: list[NightDrift]) -> str:
    """Flagged rate (blue) and PSI (orange, dashed warning line) per night, oldest left."""
    width, height, pad = 700, 150, 30
    n = len(nights)
    xs = [pad + (width - 2 * pad) * (i / (n - 1) if n > 1 else 0.5) for i in range(n)]
    psi_top = max([PSI_WARN * 1.5] + [d.psi for d in nights if math.isfinite(d.psi)])

    def line(values, top, cls):
        pts = [(x, height - pad - (height - 2 * pad) * v / top) for x, v in zip(xs, values) if math.isfinite(v)]
        dots = "".join(f"<circle cx={x:.1f} cy={y:.1f} r=3 class={cls} />" for x, y in pts)
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        return (f"<polyline points='{path}' class='{cls} trend' />" if len(pts) > 1 else "") + dots

    warn_y = height - pad - (height - 2 * pad) * PSI_WARN / psi_top
    return (f"<svg id=trend class=chart viewBox='0 0 {width} {height}' role=img aria-label='drift per night'>"
            f"<line x1={pad} y1={height - pad} x2={width - pad} y2={height - pad} class=axis />"
            f"<line x1={pad} y1={warn_y:.1f} x2={width - pad} y2={warn_y:.1f} class=psiwarn />"
            f"<text x={width - pad} y={warn_y - 3:.1f} class='tick end'>PSI {PSI_WARN}</text>"
            + line([d.flagged_rate for d in nights], 1.0, "rate") + line([d.psi for d in nights], psi_top, "psi")
            + f"<text x={pad} y=14 class=tick><tspan class=rate>&#9679; flagged rate (0 to 100%)</tspan>"
              f"<tspan dx=12 class=psi>&#9679; PSI vs validation (0 to {psi_top:.2f})</tspan></text>"
            + f"<text x={pad} y={height - 10} class=tick>{_e(nights[0].record.get('night'))}</text>"
            + f"<text x={width - pad} y={height - 10} class='tick end'>{_e(nights[-1].record.get('night'))}</text>"
            + "</svg>")


def _table_shell() -> str:
    return ("<div class=controls><label>show <select id=f-filter><option value=all>all</option>"
            "<option value=flagged>flagged</option><option value=ok>ok</option><option value=skipped>skipped</option>"
            "<option value=error>error</option><option value=ood>out of distribution</option></select></label> "
            "<label>order <select id=f-order><option value=table>as in the table</option>"
            "<option value=p>highest p_positive first</option></select></label> "
            "<label>search <input id=f-query type=search placeholder='path, UID, reason'></label> "
            "<button id=f-prev type=button>&larr;</button> <span id=f-info></span> "
            "<button id=f-next type=button>&rarr;</button></div>"
            "<div class=scroll><table id=rows><thead></thead><tbody></tbody></table></div>")


def _table_data(rows: list[dict], columns: list[str]) -> dict:
    """The table's columns that hold anything (empty UID columns of a PNG archive are left out)."""
    present = [c for c in TABLE_COLUMNS if c in columns and any(r.get(c) is not None for r in rows)]
    return {"columns": present, "rows": [[_cell(r.get(c)) for c in present] for r in rows]}


def _cell(value):
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int)):
        return value
    return str(value)


# --------------------------------------------------------------------------- helpers

def _warnings(summary: dict, nights: list[NightDrift], run: RunData) -> list[str]:
    out = []
    if not summary:
        out.append(f"No run summary found beside {_e(run.results.name)}: run metadata and drift are missing.")
    elif not summary.get("completed", True):
        out.append("The run did not complete: this table may lack files.")
    if nights and nights[-1].warning:
        d = nights[-1]
        out.append(f"Score drift: tonight's PSI against the validation distribution is {d.psi:.3f} "
                   f"(warning above {PSI_WARN} and above {d.psi_by_chance:.3f}, what chance gives for {_e(d.record.get('scored'))} new images). Check the inputs "
                   "(scanner, protocol, population) before trusting the flags; recalibrate with dcx-calibrate.")
    elif any(d.warning for d in nights):
        out.append(f"Score drift above PSI {PSI_WARN} on an earlier night: see Drift across nights.")
    return out


def _threshold(summary: dict, rows: list[dict]) -> float | None:
    value = summary.get("threshold")
    if not isinstance(value, (int, float)):
        value = next((r.get("threshold") for r in rows if isinstance(r.get("threshold"), (int, float))), None)
    return float(value) if value is not None and math.isfinite(value) else None


def _list(value) -> list:
    return value if isinstance(value, list) else []


def _shares(counts: list[int]) -> list[float]:
    total = sum(counts) or 1
    return [c / total for c in counts]


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value, digits: int) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def _pct(value) -> str:
    return "n/a" if not isinstance(value, float) or not math.isfinite(value) else f"{100 * value:.1f}%"


def _json_for_script(payload) -> str:
    """JSON safe inside <script>: no '<', '>' or '&' can end the element or open a comment."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


CSS = (Path(__file__).with_name("report.css")).read_text(encoding="utf-8")
SCRIPT = (Path(__file__).with_name("report.js")).read_text(encoding="utf-8")
