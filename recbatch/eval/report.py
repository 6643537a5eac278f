"""The evaluation report: one folder a person can open and a program can parse.

    report.md / report.html   tables: the first model against each other one on `gate_metric` (the ratio),
                              every model at the headline K, and NDCG/Recall at each K; then extra sections
                              (the nightly's injected-profile quarantine per signal, bench/attacks.py's exposure)
    report.json               every number, curves included (EvalResult.to_dict per model)
    metrics_at_k.png          precision/recall/hit rate/MRR/NDCG/MAP for K = 1..100, a line per model
    popularity.png            share of recommended slots per item-popularity decile, per model
    cold_vs_warm.png          recall and NDCG on cold-item vs warm-item held-out interactions

The folder is published whole with a manifest, like every other stage output,
so a half-rendered report is never visible. matplotlib writes local files only,
so the folder is built locally and published through ``folders.building``: on
an object-store root it is uploaded into a fresh attempt and committed by marker.
"""

from __future__ import annotations

import dataclasses
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recbatch import folders
from recbatch.eval.metrics import POPULARITY_BINS, RANKING_METRICS, EvalResult
from recbatch.fs import Location, as_location

if TYPE_CHECKING:
    from recbatch.data.snapshot import Snapshot

HEADLINE_COLUMNS = (
    "precision", "recall", "hit_rate", "mrr", "ndcg", "map",
    "coverage", "gini", "avg_popularity", "seen_share", "cold/recall", "cold/ndcg",
)
PLOTS = ("metrics_at_k.png", "popularity.png", "cold_vs_warm.png")


@dataclass(frozen=True)
class Section:
    """An extra table for the report: a title, column names and rows of formatted cells."""

    title: str
    header: list[str]
    rows: list[list[str]]


def headline_table(results: list[EvalResult], k: int) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of every model at cut-off `k`, formatted for people."""
    header = ["model", "users"] + [f"{c}@{k}" for c in HEADLINE_COLUMNS]
    rows = []
    for r in results:
        m = r.metrics()
        cells = [_fmt(m[f"{c}@{k}"]) for c in HEADLINE_COLUMNS]
        rows.append([r.name, str(r.users["all"])] + cells)
    return header, rows


def per_k_table(results: list[EvalResult], ks: list[int]) -> tuple[list[str], list[list[str]]]:
    header = ["model"] + [f"ndcg@{k}" for k in ks] + [f"recall@{k}" for k in ks]
    rows = [
        [r.name] + [_fmt(r.at("ndcg", k)) for k in ks] + [_fmt(r.at("recall", k)) for k in ks]
        for r in results
    ]
    return header, rows


def ratio_table(results: list[EvalResult], metric: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows): `metric` of every model and the first model's value as a multiple of it.

    The nightly report puts the model first and the popularity baselines after
    it, so "1.35x" reads "the model is 35% better than recommending popular items".
    """
    model = results[0]
    value = model.metrics()[metric]
    header = ["model", metric, f"{model.name} / this"]
    rows = []
    for r in results:
        other = r.metrics()[metric]
        rows.append([r.name, _fmt(other), f"{value / other:.2f}x" if other > 0 else "n/a"])
    return header, rows


def injected_profiles_section(snapshot: Snapshot) -> Section:
    """What ingest's injected-profile defence quarantined in the snapshot, per signal (data/profiles.py)."""
    from recbatch.data.profiles import QUARANTINE_FILE, quarantined_by_signal

    counts = quarantined_by_signal(snapshot)
    return Section(f"Injected profiles quarantined at ingest (review: snapshot {QUARANTINE_FILE})",
                   ["signal", "profiles", "interactions"], [[str(v) for v in row] for row in counts.iter_rows()])


def _fmt(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# --------------------------------------------------------------------------- plots


def plot_metrics_at_k(results: list[EvalResult], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8), sharex=True)
    for ax, metric in zip(axes.flat, RANKING_METRICS):
        for r in results:
            values = r.curves["all"][metric]
            ax.plot(range(1, len(values) + 1), values, label=r.name)
        ax.set_title(f"{metric}@K")
        ax.set_xlabel("K")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_popularity(results: list[EvalResult], path: Path, k: int) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(10, 5))
    width = 0.8 / max(1, len(results))
    bins = np.arange(POPULARITY_BINS)
    for i, r in enumerate(results):
        ax.bar(bins + i * width, r.popularity_bins, width, label=r.name)
    ax.set_xticks(bins + width * (len(results) - 1) / 2, [f"{b + 1}" for b in bins])
    ax.set_xlabel("item popularity decile (1 = most popular tenth of the catalog)")
    ax.set_ylabel(f"share of top-{k} slots")
    ax.set_title("Popularity of recommended items")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_cold_vs_warm(results: list[EvalResult], path: Path, k: int) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    x = np.arange(len(results))
    for ax, metric in zip(axes, ("recall", "ndcg")):
        for offset, slice_ in ((-0.2, "warm"), (0.2, "cold")):
            ax.bar(x + offset, [r.at(metric, k, slice_) for r in results], 0.4, label=slice_)
        ax.set_xticks(x, [r.name for r in results], rotation=30, ha="right")
        ax.set_title(f"{metric}@{k}: cold vs warm held-out items")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------- folder


def write_report(
    results: list[EvalResult],
    out_dir: str | Path | Location,
    *,
    headline_k: int = 10,
    context: dict[str, Any] | None = None,
    gate_metric: str | None = None,
    sections: list[Section] | None = None,
) -> Location:
    """Render tables, JSON and plots for `results` and publish them as `out_dir`, on either kind of
    root; returns where it is.

    With `gate_metric`, the report opens with the first result against each of
    the others on that metric (see `ratio_table`). `sections` are extra tables a caller
    measured itself (e.g. bench/attacks.py's target exposure with and without the
    defence), rendered after the metric tables and kept in the JSON.
    """
    if not results:
        raise ValueError("no evaluation results to report")
    context = context or {}
    final = as_location(out_dir)
    with folders.building(final) as built:
        _render(results, built, headline_k, context, gate_metric, sections or [])
        folders.publish_built(built, final, {"kind": "report", "models": [r.name for r in results], **context})
    return final


def _render(
    results: list[EvalResult], folder: Path, headline_k: int, context: dict[str, Any], gate_metric: str | None,
    sections: list[Section],
) -> None:
    """The report's files, written into the local `folder`."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    ks = results[0].ks
    plot_metrics_at_k(results, folder / "metrics_at_k.png")
    plot_popularity(results, folder / "popularity.png", ks[-1])
    plot_cold_vs_warm(results, folder / "cold_vs_warm.png", headline_k)
    tables = []
    if gate_metric and len(results) > 1:
        tables.append((f"{results[0].name} against the others on {gate_metric}", ratio_table(results, gate_metric)))
    tables += [
        (f"All models at K = {headline_k}", headline_table(results, headline_k)),
        ("NDCG and Recall at each K", per_k_table(results, ks)),
        *[(s.title, (s.header, s.rows)) for s in sections],
    ]
    facts = ", ".join(f"{k}: {v}" for k, v in context.items() if not isinstance(v, dict))
    md = [f"# Evaluation report\n\n{facts}\n"]
    page = [f"<html><head><meta charset='utf-8'><title>Evaluation report</title></head><body>"
            f"<h1>Evaluation report</h1><p>{html.escape(facts)}</p>"]
    for title, (header, rows) in tables:
        md.append(f"## {title}\n\n{_markdown(header, rows)}\n")
        page.append(f"<h2>{html.escape(title)}</h2>{_html_table(header, rows)}")
    md.append("## Plots\n\n" + "\n".join(f"![{p}]({p})" for p in PLOTS) + "\n")
    page.append("".join(f"<h2>{p}</h2><img src='{p}'>" for p in PLOTS) + "</body></html>")
    (folder / "report.md").write_text("\n".join(md))
    (folder / "report.html").write_text("".join(page))
    payload = {"context": context, "models": [r.to_dict() for r in results],
               "sections": [dataclasses.asdict(s) for s in sections]}
    (folder / "report.json").write_text(json.dumps(payload, indent=2, default=str))
