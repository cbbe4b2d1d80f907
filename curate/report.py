"""A self-contained HTML report of one run: outcomes, reasons, throughput, codec tokens, dups, concepts.

Everything comes from what the run wrote (ledger, summary, shards), so a report can be made
again for any finished run: ``python -m curate report OUT_DIR``. Plots are PNGs embedded as
base64, so the file can be mailed or attached to a ticket as it is.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from curate.ledger import format_summary, read_ledger
from curate.media import decode_image, open_video
from shards import fields as shard_fields
from shards import format as fmt
from shards import storage
from shards.index import read_index, shard_uris
from shards.tools import iter_tar

STATUS_COLOURS = {"kept": "#3a7d44", "dropped": "#d9a400", "failed": "#c0392b"}


def _subplots(*grid: int, figsize: tuple[float, float], **kw):
    """A figure of its own (no pyplot, so no global backend or figure registry) and its axes."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **kw)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def outcome_table(ledger) -> pd.DataFrame:
    """Rows per (kind, status): inputs by modality, and the samples split inputs became (a video's
    clips) on rows of their own, so a video counts once as an input and its clips apart."""
    derived = ledger["parent"].fillna("").ne("") if "parent" in ledger else pd.Series(False, index=ledger.index)
    kind = ledger["modality"].where(~derived, ledger["modality"] + " clips")
    return ledger.groupby([kind.rename("kind"), "status"]).size().unstack(fill_value=0)


def _outcomes(ledger) -> str:
    table = outcome_table(ledger)
    fig, ax = _subplots(figsize=(6, 2.6))
    left = np.zeros(len(table))
    for status in ("kept", "dropped", "failed"):
        if status in table:
            ax.barh(table.index, table[status], left=left, color=STATUS_COLOURS[status], label=status)
            left += table[status].to_numpy()
    ax.set_xlabel("inputs (clips of split videos on their own rows)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)  # beside the bars, never over one
    return _png(fig)


def _reasons(ledger) -> str:
    bad = ledger[ledger["status"] != "kept"]
    if bad.empty:
        return "<p>Every input was kept.</p>"
    counts = bad.groupby(["status", "reason"]).size().sort_values()
    fig, ax = _subplots(figsize=(6, 0.35 * len(counts) + 0.8))
    ax.barh([r for _, r in counts.index], counts.to_numpy(), color=[STATUS_COLOURS[s] for s, _ in counts.index])
    ax.set_xlabel("inputs")
    rows = "".join(
        f"<tr><td>{html.escape(r.status)}</td><td>{html.escape(str(r.reason))}</td><td>{html.escape(str(r.uri))}</td>"
        f"<td>{html.escape(str(r.detail or ''))[:300]}</td></tr>"
        for r in bad.sort_values(["status", "reason"]).head(50).itertuples()
    )
    return _png(fig) + f"<table><tr><th>status</th><th>reason</th><th>input</th><th>detail</th></tr>{rows}</table>"


def _throughput(summary: dict) -> str:
    """Rows per busy second of each stage, and where the workers' time went (busy seconds, share of all)."""
    stages = {k: v for k, v in summary.get("stages", {}).items() if v.get("rows_per_second")}
    if not stages:
        return "<p>No stage timings recorded.</p>"
    fig, (rate, spent) = _subplots(1, 2, figsize=(10, 0.35 * len(stages) + 1.0), sharey=True)
    names = list(stages)
    rate.barh(names, [v["rows_per_second"] for v in stages.values()], color="#34607f")
    rate.set_xscale("log")
    rate.set_xlabel("rows per busy second of one worker (log)")
    seconds = np.array([v["seconds"] for v in stages.values()], dtype=float)
    spent.barh(names, seconds, color="#7f5a34")
    rate.invert_yaxis()  # the stages in pipeline order, top down
    spent.set_xlabel("busy seconds (all workers)")
    for y, sec in enumerate(seconds):
        spent.annotate(f" {100 * sec / seconds.sum():.0f} %", (sec, y), va="center", fontsize=8)
    return _png(fig)


def _samples(out: str, modality: str, limit_shards: int = 20):
    """Samples of one modality, from at most ``limit_shards`` shards (a report never reads a whole corpus)."""
    folder = storage.join(out, "shards", modality)
    if not storage.exists(storage.join(folder, fmt.INDEX_NAME)):  # a run that kept none has no shards
        return
    index = read_index(folder)
    for uri in shard_uris(folder, index)[:limit_shards]:
        for key, fields in iter_tar(storage.read_bytes(uri), uri):
            yield key, fields, json.loads(fields["json"])


def _video(out: str, examples: int = 4) -> str:
    ratios, selections, signals, overlays = [], Counter(), Counter(), []
    for key, fields, meta in _samples(out, "video"):
        codec = meta.get("codec")
        if not codec or "pos.npy" not in fields:
            continue
        ratios.append(codec["k"] / float(np.prod(codec["grid"])))
        selections[codec.get("selection", "?")] += 1
        signals[codec.get("signal", "?")] += 1
        if len(overlays) < examples and "frames.jpg" in fields:
            overlays.append(
                f"<h4>{html.escape(key)} ({html.escape(codec.get('selection', ''))})</h4>" + _overlay(fields, meta)
            )
    if not ratios:
        return "<p>No video codec tokens in this run.</p>"
    fig, ax = _subplots(figsize=(6, 2.4))
    ax.hist(np.array(ratios) * 100, bins=20, color="#34607f")
    ax.set_xlabel("kept tokens, % of the clip's grid")
    ax.set_ylabel("clips")
    facts = ", ".join(f"{k}: {v}" for k, v in {**selections, **signals}.items())
    return _png(fig) + f"<p>{html.escape(facts)}</p>" + "".join(overlays)


def _overlay(fields: dict, meta: dict) -> str:
    """Stored whole frames dimmed, with the patches kept at those frames lit from the mosaic."""
    patch = meta["codec"]["patch"]
    frames, ids = shard_fields.frames(fields["frames.jpg"], meta)
    pos = shard_fields.positions(fields["pos.npy"]).astype(int)
    patches = shard_fields.mosaic(fields["patches.jpg"], len(pos), patch)
    tiles = []
    for frame, t in zip(frames, ids, strict=True):
        tile = (frame * 0.3).astype(np.uint8)
        for n in np.nonzero(pos[:, 0] == t)[0]:
            h, w = pos[n, 1] * patch, pos[n, 2] * patch
            tile[h : h + patch, w : w + patch] = patches[n]
        tiles.append(tile)
    fig, axes = _subplots(1, len(tiles), figsize=(2.2 * len(tiles), 2.4))
    for ax, tile, t in zip(np.atleast_1d(axes), tiles, ids, strict=True):
        ax.imshow(tile)
        ax.set_title(f"t={t}", fontsize=8)
        ax.axis("off")
    return _png(fig)


def _jpeg_uri(picture, side: int = 160) -> str:
    picture = picture.copy()
    picture.thumbnail((side, side))
    buf = io.BytesIO()
    picture.convert("RGB").save(buf, format="JPEG", quality=80)
    return f"data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}"


def _figure(picture, caption: str, side: int = 160) -> str:
    return (
        f'<figure style="display:inline-block;margin:4px;max-width:{side + 10}px"><img src="{_jpeg_uri(picture, side)}">'
        f'<figcaption style="font-size:11px">{html.escape(caption)}</figcaption></figure>'
    )


def _gallery(out: str, modality: str, count: int = 12) -> str:
    """The first kept samples of a modality as stored: images and pages (``jpg``), clips (first stored frame)."""
    tiles = []
    for key, fields, meta in _samples(out, modality, limit_shards=2):
        if len(tiles) == count:
            break
        if "jpg" in fields:
            picture = Image.open(io.BytesIO(fields["jpg"]))
        elif "frames.jpg" in fields:
            picture = Image.fromarray(shard_fields.frames(fields["frames.jpg"], meta)[0][0])
        else:
            continue
        tiles.append(_figure(picture, f"{key} {picture.width}x{picture.height}"))
    return "".join(tiles) or f"<p>No {modality} samples kept.</p>"


def script_table(ledger) -> pd.DataFrame:
    """OCR pages by writing script (the one most of a page's letters are in, ``ocr_scripts``): pages,
    kept, dropped as ``ocr_filter/unsupported_script``, and the kept pages' mean OCR confidence. Pages
    are inputs: the crops a page became (``ocr_crop``) are not counted again."""
    ocr = ledger[(ledger["modality"] == "ocr") & ledger["parent"].isna()]
    metas = [json.loads(m) if m else {} for m in ocr["meta"]]
    kept = (ocr["status"] == "kept").to_numpy()
    frame = pd.DataFrame(
        {
            "script": [next(iter(m["ocr_scripts"])) if m.get("ocr_scripts") else None for m in metas],
            "kept": kept,
            "unsupported": (ocr["reason"] == "ocr_filter/unsupported_script").to_numpy(),
            "conf": [m.get("ocr_mean_conf") if k else None for m, k in zip(metas, kept, strict=True)],
        }
    ).dropna(subset=["script"])
    table = frame.groupby("script").agg(
        pages=("kept", "size"),
        kept=("kept", "sum"),
        unsupported=("unsupported", "sum"),
        mean_conf_kept=("conf", "mean"),
    )
    return table.sort_values("pages", ascending=False)


def _scripts(ledger) -> str:
    table = script_table(ledger)
    if table.empty:
        return "<p>No OCR page with letters in this run.</p>"
    return table.round(3).to_html()


def _ocr_pages(out: str, examples: int = 4, side: int = 480) -> str:
    """Stored pages with the OCR line boxes drawn over them (green: confident, red: below 0.85), and what was read."""
    parts = []
    for key, fields, meta in _samples(out, "ocr", limit_shards=2):
        ocr = meta.get("ocr") or {}
        if len(parts) == examples:
            break
        if "jpg" not in fields or not ocr.get("lines"):
            continue
        page = Image.open(io.BytesIO(fields["jpg"])).convert("RGB")
        read_w, read_h = ocr.get("size") or page.size  # boxes are in the pixels of the picture read
        sx, sy = page.width / read_w, page.height / read_h
        draw = ImageDraw.Draw(page)
        for line in ocr["lines"]:
            x0, y0, x1, y1 = line["box"]
            colour = (40, 160, 60) if line["conf"] >= 0.85 else (200, 40, 40)
            draw.rectangle((x0 * sx, y0 * sy, x1 * sx, y1 * sy), outline=colour, width=2)
        text = " / ".join(line["text"] for line in ocr["lines"][:6])
        parts.append(_figure(page, f"{key}: {len(ocr['lines'])} lines; {text[:160]}", side))
    return "".join(parts) or "<p>No OCR lines in this run's shards.</p>"


def _duplicates(ledger, limit: int = 20) -> str:
    """The run's duplicate groups, largest first: each member's thumbnail (from its source), status,
    and for a dropped member what it duplicates and by which kind of match."""
    metas = [json.loads(m) for m in ledger["meta"]] if "meta" in ledger else []
    groups: dict = {}
    for row, meta in zip(ledger.itertuples(), metas, strict=True):
        if meta.get("dedup_group") is not None:  # dedup_apply tags every member, the dropped with their kind
            groups.setdefault(meta["dedup_group"], []).append((row, meta))
    groups = {g: m for g, m in groups.items() if len(m) > 1}
    if not groups:
        return "<p>No duplicate groups recorded in this run.</p>"
    sizes = Counter(len(m) for m in groups.values())
    rows = "".join(
        f"<tr><td>{html.escape(str(g))}</td><td>{''.join(_member(row, meta) for row, meta in members)}</td></tr>"
        for g, members in sorted(groups.items(), key=lambda kv: -len(kv[1]))[:limit]
    )
    return (
        f"<p>{len(groups)} groups; sizes: {dict(sorted(sizes.items()))}</p>"
        f"<table><tr><th>group</th><th>members: kept, and each dropped one with what it duplicates</th></tr>{rows}"
        "</table>"
    )


def _member(row, meta: dict) -> str:
    said = f"{row.key} ({row.status})"
    if meta.get("dup_of"):
        said += f": duplicate of {meta['dup_of']} by {meta.get('dup_kind', '?')}"
    return (
        f'<figure style="display:inline-block;margin:4px;max-width:200px">{_thumbnail(row.uri, row.modality)}'
        f'<figcaption style="font-size:11px">{html.escape(said)}</figcaption></figure>'
    )


def _thumbnail(uri: str, modality: str, side: int = 96) -> str:
    """A small JPEG of the source (a video's first frame) as a data URI; a note where it cannot be read."""
    try:
        if modality == "video":
            with open_video(uri, uri) as container:
                picture = next(container.decode(video=0)).to_image()
        else:
            picture, _ = decode_image(storage.read_bytes(uri), uri)
    except (OSError, ValueError, StopIteration) as exc:
        return f"<div>(no thumbnail: {html.escape(str(exc)[:80])})</div>"
    return f'<img src="{_jpeg_uri(picture, side)}">'


def _concepts(out: str, stages: dict) -> str:
    """Top-1 concept sizes from the shards' ``cls.npy``; only ``assign_concepts`` writes those, so a run
    without it reads no shard (reading up to 20 per modality cost more the larger the run)."""
    top1 = Counter()
    for modality in fmt.MODALITIES if "assign_concepts" in stages else ():
        for _, fields, _ in _samples(out, modality):
            if "cls.npy" in fields:
                labels = shard_fields.labels(fields["cls.npy"])
                if labels.size:
                    top1[(modality, int(labels[0]))] += 1
    if not top1:
        return "<p>No concept labels in this run's shards.</p>"
    fig, ax = _subplots(figsize=(6, 2.4))
    for modality in fmt.MODALITIES:
        sizes = sorted((n for (m, _), n in top1.items() if m == modality), reverse=True)
        if sizes:
            ax.plot(range(1, len(sizes) + 1), sizes, marker=".", label=modality)
    ax.set_xlabel("concept rank")
    ax.set_ylabel("samples with it as top-1")
    ax.legend(fontsize=8)
    return _png(fig) + f"<p>{len(top1)} concepts used as top-1 (sampled from up to 20 shards per modality).</p>"


def build_report(out: str) -> str:
    """Write ``report.html`` into the run folder and return its URI."""

    summary = json.loads(storage.read_bytes(storage.join(out, "summary.json")))
    ledger = read_ledger(out)
    sections = [
        ("Summary", f"<pre>{html.escape(format_summary(summary))}</pre>"),
        ("Outcomes by modality", _outcomes(ledger)),
        ("Why inputs were dropped or failed", _reasons(ledger)),
        ("Per-stage throughput and time", _throughput(summary)),
        ("Video codec tokens", _video(out)),
        ("Kept images", _gallery(out, "image")),
        ("Kept clips", _gallery(out, "video")),
        ("OCR pages and the lines read", _ocr_pages(out)),
        ("OCR pages by writing script", _scripts(ledger)),
        ("Duplicate groups", _duplicates(ledger)),
        ("Concept clusters", _concepts(out, summary.get("stages", {}))),
    ]
    body = "".join(f"<h2>{title}</h2>{content}" for title, content in sections)
    page = (
        "<!doctype html><meta charset=utf-8><title>ovforge run report</title><style>"
        "body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
        f"</style><h1>Run report: {html.escape(out)}</h1>{body}"
    )
    uri = storage.join(out, "report.html")
    storage.write_bytes(uri, page.encode())
    return uri
