"""The timeline of ``hms annotate``: stacked class probabilities over time (PNG) and a
self-contained HTML page (the PNG embedded as base64, the run's facts and the events table)."""
from __future__ import annotations

import base64
import html
import io
import os
from typing import Mapping

import numpy as np
import pandas as pd

from hms_core import atomic
from hms_core.contract import CLASSES

CLASS_COLOURS = {"Seizure": "#d62728", "LPD": "#ff7f0e", "GPD": "#9467bd", "LRDA": "#1f77b4",
                 "GRDA": "#17becf", "Other": "#c7c7c7"}


def prob_columns() -> list[str]:
    """The probability columns of the annotations table, in ``CLASSES`` order."""
    return [f"p_{c.lower()}" for c in CLASSES]


def timeline_png(table: pd.DataFrame, events: pd.DataFrame, *, title: str, threshold: float) -> bytes:
    """PNG bytes: the six probabilities stacked over time (one step per scored segment),
    events as bars above, padded windows hatched.

    ``table`` has ``onset_s``, ``duration_s``, the :func:`prob_columns` and ``padded_s``;
    ``events`` has ``onset_s``, ``duration_s`` and ``class``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = table["onset_s"].max() >= 2 * 3600
    scale, unit = (3600.0, "h") if hours else (60.0, "min")
    t = table["onset_s"].to_numpy() / scale
    end = (table["onset_s"] + table["duration_s"]).to_numpy() / scale
    edges = np.append(t, end[-1]) if len(t) else np.array([0.0])
    probs = np.nan_to_num(table[prob_columns()].to_numpy().T)  # (6, n)
    fig, (bar_ax, ax) = plt.subplots(2, 1, figsize=(12, 4.2), sharex=True,
                                     gridspec_kw={"height_ratios": [1, 6], "hspace": 0.05})
    bottom = np.zeros(len(t))
    for k, name in enumerate(CLASSES):
        ax.stairs(bottom + probs[k], edges, baseline=bottom, fill=True, color=CLASS_COLOURS[name], label=name)
        bottom = bottom + probs[k]
    for start, stop, padded in zip(t, end, table["padded_s"].to_numpy()):
        if padded > 0:
            ax.axvspan(start, stop, ymin=0.97, ymax=1.0, color="black", alpha=0.4, lw=0)
    for onset, duration, name in events[["onset_s", "duration_s", "class"]].itertuples(index=False, name=None):
        bar_ax.axvspan(onset / scale, (onset + duration) / scale, color=CLASS_COLOURS[name])
    bar_ax.set_yticks([])
    bar_ax.set_ylabel("events", rotation=0, ha="right", va="center")
    bar_ax.set_title(title, fontsize=10)
    ax.set_ylim(0, 1)
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylabel("probability")
    ax.set_xlabel(f"time ({unit}); events: a non-Other class leads with p >= {threshold:g}; "
                  "black ticks on top: padded windows")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def write_timeline(png_path: str | os.PathLike, html_path: str | os.PathLike, png: bytes,
                   facts: Mapping[str, object], events: pd.DataFrame) -> None:
    """Write the PNG and the HTML page (PNG as a base64 data URI, a facts list, the events table)."""
    with atomic.atomic_path(png_path) as tmp:
        tmp.write_bytes(png)
    rows = "".join(f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>" for k, v in facts.items())
    table = (events.to_html(index=False, float_format=lambda x: f"{x:.3f}", border=0)
             if len(events) else "<p>No events above the threshold.</p>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>hms annotate: {html.escape(str(facts.get('recording', '')))}</title>
<style>body{{font-family:sans-serif;margin:2em}}img{{max-width:100%}}
table{{border-collapse:collapse}}td,th{{padding:2px 8px;text-align:right}}</style></head>
<body><h1>hms annotate</h1><ul>{rows}</ul>
<img alt="class probabilities over time" src="data:image/png;base64,{base64.b64encode(png).decode('ascii')}">
<h2>Events</h2>{table}</body></html>
"""
    atomic.write_text(html_path, page)
