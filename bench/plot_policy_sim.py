"""Plots of the policy simulation: every seed's ratios, and replicas and queue over time per trace.

    .venv/bin/python bench/plot_policy_sim.py [--seeds 20] [--seed 1] [--trace recorded.csv ...]
    .venv/bin/python bench/plot_policy_sim.py --csv DIR          # plots series already written by policy_sim.py --csv DIR

Without ``--csv`` it runs the simulation of ``bench/policy_sim.py`` over seeds 1..N (its summary
is printed as usual), so the plots and the table come from the same run, and writes to
docs/img/: ``policy-seeds.png``, one point per trace and seed (worker-seconds ratio against p95
wait ratio, the target being the lower left quadrant); ``policy-<trace>.png`` for ``--seed``; and
``policy-<trace>-seed<N>.png`` for the worst seed of each synthetic trace where some seed misses
the target. A series plot has two panels sharing the time axis: the replicas each model asked for,
and the tasks waiting (all priority lists) under each model. matplotlib's Agg backend.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

MODELS = {"stalk": ("stalk", "#2b6cb0"), "keda": ("HPA + KEDA (defaults)", "#dd6b20")}


def read_series(path: Path) -> dict[str, list[float]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {key: [float(row[key]) for row in rows] for key in ("second", "replicas", "waiting", "in_flight")}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, axes, out: Path, legend: str = "upper right") -> None:
    for ax in axes:
        ax.legend(loc=legend, fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    _pyplot().close(fig)


def plot_trace(title: str, series: dict[str, dict[str, list[float]]], out: Path) -> None:
    fig, (top, bottom) = _pyplot().subplots(2, 1, figsize=(10, 5.2), sharex=True, gridspec_kw={"height_ratios": [1, 1]})
    for model, data in series.items():
        label, color = MODELS.get(model, (model, None))
        minutes = [s / 60 for s in data["second"]]
        top.step(minutes, data["replicas"], where="post", color=color, linewidth=1.1, label=label)
        bottom.plot(minutes, data["waiting"], color=color, linewidth=0.9, label=f"waiting, {label}")
    top.set_ylabel("replicas")
    top.set_title(f"{title}: replicas over time", fontsize=10)
    bottom.set_ylabel("tasks waiting")
    bottom.set_xlabel("time (minutes)")
    bottom.set_title("tasks waiting (all priority lists) under each model", fontsize=10)
    _finish(fig, (top, bottom), out)


def plot_seeds(comparisons, out: Path) -> None:
    """One point per trace and seed: worker-seconds ratio (y) against p95 wait ratio (x, log)."""
    import policy_sim

    fig, ax = _pyplot().subplots(figsize=(8, 5))
    for trace, runs in policy_sim.by_trace(comparisons).items():
        ax.scatter([max(c.wait_ratio, 1e-3) for c in runs], [c.worker_ratio for c in runs], s=22, alpha=0.75,
                   label=f"{trace} ({sum(c.verdict == policy_sim.MET for c in runs)}/{len(runs)} met)")
    ax.axhline(1, color="grey", linewidth=0.8)
    ax.axvline(1, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("p95 wait, stalk / HPA+KEDA (log; left: stalk's tasks wait less)")
    ax.set_ylabel("worker-seconds, stalk / HPA+KEDA")
    ax.set_title(f"every trace, seeds 1..{max(c.seed for c in comparisons)}: the target is the lower left quadrant",
                 fontsize=10)
    _finish(fig, (ax,), out, legend="upper left")


def _as_series(result) -> dict[str, list[float]]:
    columns = list(zip(*result.series))
    return {key: list(column) for key, column in zip(("second", "replicas", "waiting", "in_flight"), columns)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, help="plot series written by policy_sim.py --seed N --csv DIR instead")
    parser.add_argument("--seeds", type=int, default=20, help="seeds 1..N for the ratios plot (default 20)")
    parser.add_argument("--seed", type=int, default=1, help="the seed whose series are plotted per trace (default 1)")
    parser.add_argument("--trace", type=Path, action="append", default=[],
                        help="a recorded trace (CSV); default: every bench/traces/*.csv")
    parser.add_argument("--out", type=Path, default=BENCH.parent / "docs" / "img", help="where the PNGs go")
    args = parser.parse_args(argv)

    if args.csv is not None:
        traces: dict[str, dict[str, dict[str, list[float]]]] = {}
        for path in sorted(args.csv.glob("*-*.csv")):
            trace, _, model = path.stem.rpartition("-")
            traces.setdefault(trace, {})[model] = read_series(path)
        if not traces:
            parser.error(f"no <trace>-<model>.csv files in {args.csv}")
        for trace, series in traces.items():
            ordered = {m: series[m] for m in ("stalk", "keda") if m in series} | series
            _save(plot_trace, f"trace '{trace}'", ordered, args.out / f"policy-{trace}.png")
        return 0

    import policy_sim

    recorded = {path.stem: policy_sim.recorded_trace(path) for path in args.trace or policy_sim.RECORDED}
    comparisons = policy_sim.sweep(range(1, max(args.seeds, args.seed) + 1), recorded=recorded)
    policy_sim.print_summary(comparisons)
    _save(plot_seeds, comparisons, args.out / "policy-seeds.png")
    for trace, runs in policy_sim.by_trace(comparisons).items():
        shown = [c for c in runs if c.seed == args.seed]
        worst = max(runs, key=lambda c: c.worker_ratio)
        if worst.verdict != policy_sim.MET and trace not in recorded:  # a recorded trace is the same under any seed
            shown.append(worst)
        for c in shown:
            name = f"policy-{trace}.png" if c.seed == args.seed else f"policy-{trace}-seed{c.seed}.png"
            _save(plot_trace, f"trace '{trace}', seed {c.seed}",
                  {"stalk": _as_series(c.stalk), "keda": _as_series(c.keda)}, args.out / name)
    return 0


def _save(plot, *arguments) -> None:
    plot(*arguments)  # the last argument is the PNG's path
    print(f"wrote {arguments[-1]}")


if __name__ == "__main__":
    sys.exit(main())
