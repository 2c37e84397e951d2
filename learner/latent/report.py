"""The study's summary: means over seeds with t intervals, paired differences, table, figures.

An interval is the 95% Student t interval of the mean over seeds (``scipy.stats.t``); with one
seed there is none (reported as NaN). A paired difference (latent minus a baseline at the same
K) is taken seed by seed, then summarized the same way.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from learner.latent.data import FAMILIES, LENGTH_BUCKETS, bucket_name

BUCKETS = tuple(bucket_name(b) for b in range(len(LENGTH_BUCKETS)))


def mean_ci(values: list[float], level: float = 0.95) -> dict:
    """Mean and the half-width of its t interval over ``values`` (NaN half-width below 2)."""
    from scipy import stats

    values = [v for v in values if not math.isnan(v)]
    n = len(values)
    if n == 0:
        return {"mean": math.nan, "ci": math.nan, "n": 0}
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "ci": math.nan, "n": n}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return {"mean": mean, "ci": float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)), "n": n}


def metrics_of(cell: dict) -> dict[str, float]:
    """The flat numbers of one cell: em, f1, ratio, pointer_acc, em/f1 per family and bucket
    (a family or bucket without rows is left out)."""
    flat = {m: cell[m] for m in ("em", "f1", "ratio", "pointer_acc") if m in cell}
    for group in ("by_family", "by_bucket"):
        for name, g in cell[group].items():
            if g["n"]:
                flat[f"em.{name}"], flat[f"f1.{name}"], flat[f"n.{name}"] = g["em"], g["f1"], g["n"]
    return flat


def row_name(cell: dict) -> str:
    return cell["arm"] if cell["view"] == "latent" else cell["view"]


def summarize(cells: list[dict]) -> dict:
    """{row: {k: {metric: mean_ci}}} and the paired ``latent - row`` differences at each K."""
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for c in cells:
        groups[(row_name(c), c["k"])].append(c)
    table: dict[str, dict] = defaultdict(dict)
    for (row, k), group in groups.items():
        flats = [metrics_of(c) for c in group]
        table[row][k] = {m: mean_ci([f[m] for f in flats if m in f]) for m in {m for f in flats for m in f}}
        table[row][k]["seeds"] = sorted(c["seed"] for c in group)
    by_seed = {(row_name(c), c["k"], c["seed"]): c for c in cells}
    paired: dict[str, dict] = defaultdict(lambda: defaultdict(lambda: {"em": [], "f1": []}))
    for (row, k, seed), c in by_seed.items():
        mine = by_seed.get(("latent", k, seed))
        if row != "latent" and k > 0 and mine is not None:  # full (k 0) covers other rows: no pair
            for m in ("em", "f1"):
                paired[row][k][m].append(mine[m] - c[m])
    diffs = {row: {k: {m: mean_ci(v) for m, v in ms.items()} for k, ms in ks.items()} for row, ks in paired.items()}
    return {"table": table, "latent_minus": diffs}


def finite(summary: dict) -> bool:
    """Every mean in the summary is a finite number (intervals may be NaN with one seed)."""
    def walk(x):
        if isinstance(x, dict):
            if "mean" in x and "ci" in x:
                return math.isfinite(x["mean"])
            return all(walk(v) for v in x.values())
        return True

    return walk(summary["table"])


def fmt(m: dict | None, pct: bool = True) -> str:
    if not m or math.isnan(m["mean"]):
        return "-"
    scale = 100 if pct else 1
    ci = "" if math.isnan(m["ci"]) else f" ± {m['ci'] * scale:.1f}"
    return f"{m['mean'] * scale:.1f}{ci}"


def markdown(summary: dict, budgets: tuple[int, ...]) -> str:
    """Per K: every row's EM, F1, EM per family and per bucket (percent, ± 95% t interval)."""
    table, lines = summary["table"], []
    head = ["row", "seeds", "EM", "F1", *[f"EM {f}" for f in FAMILIES], *[f"EM {b}" for b in BUCKETS],
            "ratio", "pointer"]
    for k in (0, *budgets):
        rows = [r for r in table if k in table[r]]
        if not rows:
            continue
        lines += [f"\n**{'full context (rows that fit the window)' if k == 0 else f'K = {k}'}**\n",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in sorted(rows, key=lambda r: (r not in ("latent", "shared"), r)):
            m = table[r][k]
            cols = [r, str(len(m["seeds"])), fmt(m.get("em")), fmt(m.get("f1")),
                    *[fmt(m.get(f"em.{f}")) for f in FAMILIES], *[fmt(m.get(f"em.{b}")) for b in BUCKETS],
                    fmt(m.get("ratio"), pct=False), fmt(m.get("pointer_acc"))]
            lines.append("| " + " | ".join(cols) + " |")
    diffs = summary["latent_minus"]
    if diffs:
        ks = sorted({k for d in diffs.values() for k in d})
        lines += ["\n**latent minus each row, paired by seed (EM points, ± 95% t interval)**\n",
                  "| row | " + " | ".join(f"K = {k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
        for r in sorted(diffs):
            lines.append(f"| {r} | " + " | ".join(fmt(diffs[r].get(k, {}).get("em")) for k in ks) + " |")
    return "\n".join(lines) + "\n"


def write_report(out: str | Path, cells: list[dict], budgets: tuple[int, ...]) -> dict:
    """OUT/summary.json, OUT/table.md, OUT/latent_k.png, OUT/latent_buckets.png, OUT/latent_curves.png."""
    from learner.latent.figures import bucket_figure, curve_figure, k_figure

    out = Path(out)
    summary = summarize(cells)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    (out / "table.md").write_text(markdown(summary, budgets))
    k_figure(summary, budgets, out / "latent_k.png")
    bucket_figure(summary, budgets, out / "latent_buckets.png")
    curve_figure(out / "runs", out / "latent_curves.png")
    return summary
