"""Plots of the policy simulation: replicas over time (stalk vs HPA+KEDA) and the queue, per trace.

    .venv/bin/python bench/plot_policy_sim.py                    # runs bench/policy_sim.py, writes docs/img/policy-<trace>.png
    .venv/bin/python bench/plot_policy_sim.py --csv DIR          # plots series already written by policy_sim.py --csv DIR

Without ``--csv`` it runs ``bench/policy_sim.py --csv <temporary dir> [--seed N]`` first (its table
is printed as usual), so the plots and the table come from the same run. Each PNG has two panels
sharing the time axis: the replicas each model asked for, and the tasks waiting (all priority
lists) under each model. matplotlib's Agg backend: no display needed.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

MODELS = {"stalk": ("stalk", "#2b6cb0"), "keda": ("HPA + KEDA (defaults)", "#dd6b20")}


def read_series(path: Path) -> dict[str, list[float]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {key: [float(row[key]) for row in rows] for key in ("second", "replicas", "waiting", "in_flight")}


def plot_trace(trace: str, series: dict[str, dict[str, list[float]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 5.2), sharex=True, gridspec_kw={"height_ratios": [1, 1]})
    for model, data in series.items():
        label, color = MODELS.get(model, (model, None))
        minutes = [s / 60 for s in data["second"]]
        top.step(minutes, data["replicas"], where="post", color=color, linewidth=1.1, label=label)
        bottom.plot(minutes, data["waiting"], color=color, linewidth=0.9, label=f"waiting, {label}")
    top.set_ylabel("replicas")
    top.set_title(f"trace '{trace}': replicas over time", fontsize=10)
    top.legend(loc="upper right", fontsize=8)
    top.grid(alpha=0.3)
    bottom.set_ylabel("tasks waiting")
    bottom.set_xlabel("time (minutes)")
    bottom.set_title("queue depth (all priority lists) under each model", fontsize=10)
    bottom.legend(loc="upper right", fontsize=8)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, help="series written by policy_sim.py --csv (default: run it now)")
    parser.add_argument("--seed", type=int, default=1, help="passed to policy_sim.py when it is run here")
    parser.add_argument("--out", type=Path, default=BENCH.parent / "docs" / "img", help="where the PNGs go")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="stalk-policy-sim-") as tmp:
        directory = args.csv
        if directory is None:
            import policy_sim

            directory = Path(tmp)
            policy_sim.main(["--csv", str(directory), "--seed", str(args.seed)])
        traces: dict[str, dict[str, dict[str, list[float]]]] = {}
        for path in sorted(directory.glob("*-*.csv")):
            trace, _, model = path.stem.rpartition("-")
            traces.setdefault(trace, {})[model] = read_series(path)
        if not traces:
            parser.error(f"no <trace>-<model>.csv files in {directory}")
        for trace, series in traces.items():
            ordered = {m: series[m] for m in ("stalk", "keda") if m in series} | series
            out = args.out / f"policy-{trace}.png"
            plot_trace(trace, ordered, out)
            print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
