"""The comparison's report: results.csv (one row per cell and metric), summary.md (mean ± std per
strategy, paired differences against the first strategy) and summary.png (every seed's value and
the pretraining loss curves)."""
from __future__ import annotations

import csv
import os
import statistics
import subprocess

from .evaluate import COMMON_MASK_SEED, KNN_K, KNN_TEMPERATURE, METRICS, PROBE_WEIGHT_DECAY

COLUMNS = ["target", "strategy", "ratio", "effective_masked_share", "seed", "metric", "value", "steps", "wall_seconds",
           "checkpoint"]
DESCRIPTIONS = {
    "recon_common": "masked-cube loss on the val list under the common mask (random masking at MASK.RATIO, "
                    f"seeded per item from {COMMON_MASK_SEED}; the same masks for every cell); lower is better",
    "recon_own": "masked-cube loss on the val list under the cell's own strategy (same per-item keys)",
    "knn_top1": f"k-NN top-1 (%) on frozen mean-pooled encoder features, cosine, k={KNN_K} (at most the memory "
                f"size), votes exp(sim/{KNN_TEMPERATURE}); train list = memory, val list = queries",
    "probe_top1": "linear-probe top-1 (%) on the same frozen features (standardized; logistic regression, "
                  f"L2 {PROBE_WEIGHT_DECAY:g}, full-batch L-BFGS to convergence)",
    "finetune_top1": "fine-tuning top-1 (%): --finetune-config's recipe from the cell's weights with the cell's "
                     "seed, its final test (DATA.TEST_NUM_CLIPS x DATA.TEST_NUM_CROPS views on its test list)",
}


def commit() -> str:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"`{head}`" + (" with uncommitted changes" if dirty else "")


def fmt(metric: str, value: float) -> str:
    return f"{value:.1f}" if metric.endswith("top1") else f"{value:.4g}"


def config_target(base) -> str:
    from ..targets import resolve_target_name

    return resolve_target_name(base.MODEL.TARGET, base.MODEL.NORM_TARGET)


def rows_of(out: str, done, target: str = "pixel") -> list[dict]:
    """`target`: the config's, for cells that do not set their own."""
    rows = []
    for cell, record, result in done:
        for metric, value in result["metrics"].items():
            rows.append({"target": cell.target or target, "strategy": cell.strategy, "ratio": f"{cell.ratio:g}",
                         "effective_masked_share": f"{result['effective_masked_share']:.6g}", "seed": cell.seed,
                         "metric": metric, "value": f"{value:.8g}", "steps": record["steps"],
                         "wall_seconds": record["wall_seconds"],
                         "checkpoint": os.path.relpath(os.path.join(cell.folder(out), "model.pt"), out)})
    return rows


def mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summary_text(base, config: str, overrides, cells, evals, done) -> str:
    metrics = [m for e in evals for m in METRICS[e]]
    strategies = list(dict.fromkeys(c.label for c in cells))
    ratios = list(dict.fromkeys(c.ratio for c in cells))
    seeds = list(dict.fromkeys(c.seed for c in cells))
    by_cell = {(c.label, c.ratio, c.seed): (record, result) for c, record, result in done}
    targets = list(dict.fromkeys(c.target for c in cells if c.target))
    steps = sorted({record["steps"] for _, record, _ in done})
    clips = base.TRAIN.BATCH_SIZE * base.DATA.NUM_REPEATS * base.TRAIN.ACCUM_STEPS
    left_out = [c.name for c in cells if (c.label, c.ratio, c.seed) not in by_cell]
    walls = [record["wall_seconds"] for _, record, _ in done]
    lines = [
        "# Masking-strategy comparison",
        "",
        f"- commit: {commit()}",
        f"- config: `{os.path.relpath(config)}`" + (f", overrides `{' '.join(overrides)}`" if overrides else ""),
        f"- budget per cell: {', '.join(map(str, steps)) or '-'} optimizer steps of {clips} clips "
        f"(TRAIN.BATCH_SIZE {base.TRAIN.BATCH_SIZE} x DATA.NUM_REPEATS {base.DATA.NUM_REPEATS} x TRAIN.ACCUM_STEPS "
        f"{base.TRAIN.ACCUM_STEPS}, one process), TRAIN.EPOCHS {base.TRAIN.EPOCHS}"
        + (f", TRAIN.MAX_STEPS {base.TRAIN.MAX_STEPS}" if base.TRAIN.MAX_STEPS else "")
        + ("" if len(steps) <= 1 else " -- **the cells did not train for the same number of steps**"),
        f"- reconstruction target: {config_target(base)} (MODEL.TARGET)" if not targets else
        f"- reconstruction targets: {', '.join(targets)} (MODEL.TARGET per cell); recon_common and recon_own are "
        "each target's own loss, in its own units: compare them within a target, k-NN and probe across targets",
        f"- seeds: {', '.join(map(str, seeds))}; cells of one seed share data order, initialisation and "
        "augmentation, only the masks" + (" and targets" if targets else "") + " differ",
        f"- cells: {len(done)} of {len(cells)}" + (f" (left out, not finished: {', '.join(left_out)})" if left_out
                                                    else ""),
        f"- wall time of pretraining: {statistics.fmean(walls):.0f} s per cell, {sum(walls):.0f} s in all"
        if walls else "- wall time of pretraining: -",
        "",
        "Metrics:",
        "",
        *[f"- `{m}`: {DESCRIPTIONS[m]}" for m in metrics],
        "- masked share: the share of cubes the strategy actually hides, counted on its drawn masks",
    ]
    for ratio in ratios:
        lines += ["", f"## MASK.RATIO {ratio:g}", "",
                  f"| {'target / strategy' if targets else 'strategy'} | masked share | " + " | ".join(f"{m} (mean ± std, n)" for m in metrics) + " |",
                  "|---|---|" + "---|" * len(metrics)]
        values = {}
        for s in strategies:
            present = [by_cell[(s, ratio, seed)] for seed in seeds if (s, ratio, seed) in by_cell]
            if not present:
                continue
            share = present[0][1]["effective_masked_share"]
            cols = []
            for m in metrics:
                vals = [result["metrics"][m] for _, result in present]
                values[(s, m)] = vals
                mean, std = mean_std(vals)
                cols.append(f"{fmt(m, mean)} ± {fmt(m, std) if std is not None else '-'} ({len(vals)})")
            lines.append(f"| {s} | {share:.1%} | " + " | ".join(cols) + " |")
        lines += paired_differences(strategies, ratio, seeds, metrics, by_cell,
                                    {c.label: c.target for c in cells})
    return "\n".join(lines) + "\n"


def paired_differences(strategies, ratio, seeds, metrics, by_cell, target_of=None) -> list[str]:
    """`target_of`: each row's target; a reconstruction loss is not differenced across targets (each
    is in its own target's units)."""
    first = strategies[0]
    target_of = target_of or {}
    others = [s for s in strategies[1:]]
    if not others or not metrics:
        return []
    lines = ["", f"Paired differences against {first} (the same seed; mean ± std over seeds), and the spread "
             "between seeds (the larger std of the two strategies):", "",
             "| strategy | metric | difference | spread between seeds |", "|---|---|---|---|"]
    notes = []
    for s in others:
        for m in metrics:
            if m.startswith("recon") and target_of.get(s, "") != target_of.get(first, ""):
                continue
            pairs = [(by_cell[(s, ratio, seed)][1]["metrics"][m], by_cell[(first, ratio, seed)][1]["metrics"][m])
                     for seed in seeds if (s, ratio, seed) in by_cell and (first, ratio, seed) in by_cell]
            if not pairs:
                continue
            diff, diff_std = mean_std([a - b for a, b in pairs])
            spreads = [mean_std([p[k] for p in pairs])[1] for k in (0, 1)]
            spread = max(spreads) if None not in spreads else None
            lines.append(f"| {s} | {m} | {fmt(m, diff)} ± {fmt(m, diff_std) if diff_std is not None else '-'} "
                         f"({len(pairs)}) | {fmt(m, spread) if spread is not None else '-'} |")
            if spread is None:
                notes.append(f"- {s} vs {first}, {m}: one seed, no spread to judge the difference by.")
            elif abs(diff) < spread:
                notes.append(f"- {s} vs {first}, {m}: the difference ({fmt(m, diff)}) is smaller than the spread "
                             f"between seeds ({fmt(m, spread)}); these runs do not tell the two apart.")
    return lines + ([""] + notes if notes else [])


def plot(out: str, cells, evals, done, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..engine.logs import read_metrics

    metrics = [m for e in evals for m in METRICS[e]]
    strategies = list(dict.fromkeys(c.label for c in cells))
    ratios = list(dict.fromkeys(c.ratio for c in cells))
    groups = [(s, r) for r in ratios for s in strategies]
    colours = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(strategies)}
    panels = len(metrics) + 1
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.6), dpi=110, squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for x, (s, r) in enumerate(groups):
            vals = [result["metrics"][m] for c, _, result in done if (c.label, c.ratio) == (s, r)]
            if not vals:
                continue
            ax.scatter([x] * len(vals), vals, color=colours[s], alpha=0.7, s=18, zorder=3)
            ax.hlines(statistics.fmean(vals), x - 0.3, x + 0.3, color="black", lw=1.5, zorder=4)
        ax.set_xticks(range(len(groups)), [s if len(ratios) == 1 else f"{s}\n{r:g}" for s, r in groups])
        ax.set_title(m, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    ax = axes[0][-1]
    for c, _, _ in done:
        path_jsonl = os.path.join(c.folder(out), "metrics.jsonl")
        if not os.path.exists(path_jsonl):
            continue
        rows = read_metrics(path_jsonl, "train")
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], color=colours[c.label], alpha=0.6,
                lw=1, label=c.label)
        val = [r for r in read_metrics(path_jsonl, "val") if "recon_common" in r]
        if val:   # the validation pass: the common mask, comparable across strategies
            ax.plot([r["step"] for r in val], [r["recon_common"] for r in val], "o--", color=colours[c.label],
                    alpha=0.8, lw=1, ms=2.5, label=f"{c.label} val (common mask)")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    if unique:
        ax.legend(unique.values(), unique.keys(), fontsize=7)
        ax.set_yscale("log")
    ax.set_title("pretraining loss: train (own masks; not comparable across strategies),\n"
                 "val dashed (common mask; comparable)", fontsize=8)
    ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(out: str, base, config: str, overrides, cells, evals, done) -> list[str]:
    csv_path, md_path, png_path = (os.path.join(out, name) for name in ("results.csv", "summary.md", "summary.png"))
    with open(csv_path + ".tmp", "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows(rows_of(out, done, config_target(base)))
    os.replace(csv_path + ".tmp", csv_path)
    with open(md_path, "w") as handle:
        handle.write(summary_text(base, config, overrides, cells, evals, done))
    plot(out, cells, evals, done, png_path)
    return [csv_path, md_path, png_path]


def range_verdict(first: str, first_values: list[float], second: str, second_values: list[float]) -> str:
    """One sentence on two sets of seeds' results: a difference counts only when the ranges (min to
    max over seeds) do not overlap; otherwise the runs are inconclusive, whatever the means say."""
    lo1, hi1, lo2, hi2 = min(first_values), max(first_values), min(second_values), max(second_values)
    ranges = f"{first} {lo1:.1f}-{hi1:.1f}, {second} {lo2:.1f}-{hi2:.1f}"
    if len(first_values) < 2 or len(second_values) < 2:
        return f"Inconclusive: one seed has no range to judge a difference by ({ranges})."
    if lo1 > hi2:
        return f"{first} is ahead for every seed: the ranges do not overlap ({ranges})."
    if lo2 > hi1:
        return f"{second} is ahead for every seed: the ranges do not overlap ({ranges})."
    return f"Inconclusive: the ranges overlap ({ranges})."
