#!/usr/bin/env python3
"""Draws the fortimisp dashboard from Prometheus range queries, in the dashboard's own layout.

Grafana is not in the package registries this project's CI reaches, so docs/dashboard.png is made with this
script instead of a Grafana screenshot. Its input is the file the end-to-end test writes with
FORTIMISP_DASHBOARD_DATA set (tests/e2e/monitoring.rs): for every panel of deploy/grafana/fortimisp.json its
title, type, grid position, unit and, per query, Prometheus's query_range answer over the lab run.

    python3 deploy/grafana/plot.py target/dashboard-data.json docs/dashboard.png

Needs matplotlib (pip install matplotlib). docs/production.md, section 9.3, gives the whole procedure.
"""

import json
import math
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.patches import FancyBboxPatch  # noqa: E402

BACKGROUND = "#111217"
PANEL = "#181b1f"
TEXT = "#ccccdc"
GRID = "#2c3235"
COLORS = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#fade2a", "#ff7383"]
UNIT_WIDTH = 0.78  # inches per grid column (24 columns)
UNIT_HEIGHT = 0.36  # inches per grid row


def legend(fmt, labels):
    """Grafana's legendFormat: {{label}} replaced by the series' label value."""
    if not fmt:
        return ",".join(f"{k}={v}" for k, v in labels.items() if k != "__name__") or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def fmt_value(value, unit):
    if math.isnan(value):
        return "-"
    if unit == "percentunit":
        return f"{value * 100:.0f}%"
    if unit == "s":
        if value >= 3600:
            return f"{value / 3600:.1f} h"
        if value >= 60:
            return f"{value / 60:.1f} min"
        if value >= 1:
            return f"{value:.1f} s"
        return f"{value * 1000:.0f} ms"
    if abs(value) >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.3g}"


def panel_box(fig, panel, total_rows):
    """Draws a panel's background and title; returns its box (left, bottom, width, height) in figure fractions."""
    grid = panel["gridPos"]
    pad = 0.1
    left = (grid["x"] + pad) / 24
    width = (grid["w"] - 2 * pad) / 24
    top = 1 - (grid["y"] + pad) / total_rows
    height = (grid["h"] - 2 * pad) / total_rows
    fig.patches.append(FancyBboxPatch((left, top - height), width, height, boxstyle="square,pad=0",
                                      transform=fig.transFigure, facecolor=PANEL, edgecolor=GRID, zorder=-1))
    fig.text(left + 0.004, top - 0.45 / total_rows, panel["title"], color=TEXT, fontsize=9, va="center")
    return left, top - height, width, height


def draw_row(fig, panel, total_rows):
    y = 1 - (panel["gridPos"]["y"] + 0.6) / total_rows
    fig.text(0.004, y, panel["title"], color=TEXT, fontsize=12, fontweight="bold", va="center")


def draw_stat(fig, panel, total_rows):
    left, bottom, width, height = panel_box(fig, panel, total_rows)
    title = 0.9 / total_rows
    ax = fig.add_axes([left + 0.003, bottom + 0.003, width - 0.006, height - title - 0.003])
    ax.axis("off")
    boxes = []
    for target in panel["targets"]:
        for series in target["series"] or [{"metric": {}, "values": []}]:
            values = [number(v) for _, v in series["values"]]
            last = next((v for v in reversed(values) if not math.isnan(v)), math.nan)
            boxes.append((legend(target["legend"], series["metric"]), last))
    n = max(len(boxes), 1)
    for i, (name, value) in enumerate(boxes):
        color = "#37872d" if value == 0 else ("#c4162a" if not math.isnan(value) else GRID)
        ax.add_patch(FancyBboxPatch((i / n + 0.003, 0.02), 1 / n - 0.006, 0.96, boxstyle="square,pad=0",
                                    transform=ax.transAxes, color=color))
        ax.text(i / n + 0.5 / n, 0.62, fmt_value(value, "short"), transform=ax.transAxes, ha="center", va="center",
                color="white", fontsize=16, fontweight="bold")
        ax.text(i / n + 0.5 / n, 0.22, name, transform=ax.transAxes, ha="center", va="center", color="white",
                fontsize=8)


def draw_timeseries(fig, panel, total_rows, start, revoked_at):
    left, bottom, width, height = panel_box(fig, panel, total_rows)
    unit_h = 1 / total_rows
    # Room for the y tick labels on the left, the title on top, the x label and the legend below.
    ax = fig.add_axes([left + 0.075 * width, bottom + 2.0 * unit_h, width * 0.9, height - 3.0 * unit_h])
    ax.set_facecolor(PANEL)
    unit = panel.get("unit") or "short"
    i = 0
    for target in panel["targets"]:
        for series in target["series"]:
            xs = [(t - start) / 60 for t, _ in series["values"]]
            ys = [number(v) for _, v in series["values"]]
            if unit == "percentunit":
                ys = [y * 100 for y in ys]
            ax.plot(xs, ys, color=COLORS[i % len(COLORS)], linewidth=1.2,
                    label=legend(target["legend"], series["metric"]))
            i += 1
    ax.axvline((revoked_at - start) / 60, color="#f2495c", linestyle="--", linewidth=0.8)
    ax.tick_params(colors=TEXT, labelsize=7)
    ax.grid(color=GRID, linewidth=0.5)
    for spine in ax.spines.values():
        spine.set_color(GRID)
    ax.set_xlabel("minutes", color=TEXT, fontsize=7, labelpad=1)
    suffix = {"s": "seconds", "percentunit": "%", "cps": "per second", "reqps": "requests/s"}.get(unit, "")
    if suffix:
        ax.set_ylabel(suffix, color=TEXT, fontsize=7, labelpad=2)
    ax.set_ylim(bottom=0)
    if i:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=min(i, 4), fontsize=6.5, frameon=False,
                  labelcolor=TEXT)


def main(data_path, out_path):
    with open(data_path) as f:
        data = json.load(f)
    panels = data["panels"]
    total_rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels) + 1.5
    fig = plt.figure(figsize=(24 * UNIT_WIDTH, total_rows * UNIT_HEIGHT), facecolor=BACKGROUND)
    for panel in panels:
        if panel["type"] == "row":
            draw_row(fig, panel, total_rows)
        elif panel["type"] == "stat":
            draw_stat(fig, panel, total_rows)
        else:
            draw_timeseries(fig, panel, total_rows, data["start"], data["revoked_at"])
    minutes = (data["end"] - data["start"]) / 60
    fig.text(0.005, 0.004,
             f"{data['dashboard']}: the dashboard's queries over {minutes:.0f} minutes of the lab's data in a real "
             f"Prometheus ($__rate_interval = {data['rate_interval']}); plotted by deploy/grafana/plot.py, not "
             f"Grafana. Dashed red line: the FortiGate starts refusing the token.",
             color=TEXT, fontsize=8)
    fig.savefig(out_path, dpi=80, facecolor=BACKGROUND)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: plot.py DASHBOARD-DATA.json OUT.png")
    main(sys.argv[1], sys.argv[2])
