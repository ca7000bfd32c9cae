"""Plotly figures for the Providers page, built from :mod:`pipeline.review.stats` (no streamlit here)."""

from __future__ import annotations

import plotly.graph_objects as go

from pipeline.review import stats

_LAYOUT = dict(margin=dict(l=10, r=10, t=40, b=10), height=340, legend=dict(orientation="h", y=-0.2))
OUTCOME_COLOURS = {"ok": "#2ea043", "retried": "#d29922", "error": "#f85149", "blocked": "#a371f7"}


def success_rate(rows: list[stats.Call]) -> go.Figure:
    fig = go.Figure()
    for series, points in stats.success_over_time(rows).items():
        fig.add_scatter(x=[t for t, _, _ in points], y=[r * 100 for _, r, _ in points], mode="lines+markers", name=series,
                        customdata=[n for _, _, n in points], hovertemplate="%{y:.0f}% of %{customdata} calls<extra>%{fullData.name}</extra>")
    fig.update_layout(title="Success rate over time (%)", yaxis=dict(range=[0, 105]), **_LAYOUT)
    return fig


def latency(rows: list[stats.Call]) -> go.Figure:
    pct = stats.latency_percentiles(rows)
    names = list(pct)
    fig = go.Figure()
    fig.add_bar(x=names, y=[pct[n][0] for n in names], name="p50")
    fig.add_bar(x=names, y=[pct[n][1] for n in names], name="p95")
    fig.update_layout(title="Latency of successful calls (ms)", barmode="group", **_LAYOUT)
    return fig


def outcomes(rows: list[stats.Call]) -> go.Figure:
    counts = stats.outcome_counts(rows)
    names = list(counts)
    fig = go.Figure()
    for outcome in stats.OUTCOMES:
        fig.add_bar(x=names, y=[counts[n][outcome] for n in names], name=outcome, marker_color=OUTCOME_COLOURS[outcome])
    fig.update_layout(title="Calls by outcome", barmode="stack", **_LAYOUT)
    return fig


def cost(runs: list[stats.RunCost]) -> go.Figure:
    labels = [f"run {r.run_id}" for r in runs]
    fig = go.Figure()
    fig.add_bar(x=labels, y=[r.cost_usd for r in runs], name="run cost ($)")
    fig.add_scatter(x=labels, y=[r.per_approved for r in runs], name="per approved image ($)", mode="markers", yaxis="y2",
                    marker=dict(size=11, symbol="diamond"))
    fig.update_layout(title="Cost per run and per approved image", yaxis=dict(title="$ per run", rangemode="tozero"),
                      yaxis2=dict(title="$ per approved image", overlaying="y", side="right", rangemode="tozero"), **_LAYOUT)
    return fig


def score_distribution(scored: list[stats.Scored]) -> go.Figure:
    fig = go.Figure()
    for provider in sorted({x.provider for x in scored}):
        mine = [x for x in scored if x.provider == provider]
        fig.add_box(x=[f"iteration {x.iteration}" for x in mine], y=[x.score for x in mine], name=provider, boxmean=True)
    fig.update_layout(title="Judge score by iteration and provider", boxmode="group", yaxis=dict(range=[0, 10.5]), **_LAYOUT)
    return fig


def stars_vs_score(points: list[tuple[float, int, str]]) -> go.Figure:
    fig = go.Figure()
    for reviewer in sorted({r for _, _, r in points}):
        mine = [(sc, st) for sc, st, r in points if r == reviewer]
        fig.add_scatter(x=[sc for sc, _ in mine], y=[st for _, st in mine], mode="markers", name=reviewer,
                        marker=dict(size=9, opacity=0.6))
    fig.update_layout(title="Reviewers' stars against the judge's score", xaxis=dict(title="judge score", range=[0, 10.2]),
                      yaxis=dict(title="stars", range=[0.5, 5.5], dtick=1), **_LAYOUT)
    return fig
