"""The frontier of stalk's scaling settings: worker-seconds against p95 wait, per trace (issue 16).

Run: ``python bench/policy_frontier.py [--seeds 20] [--jobs 2] [--only NAME ...] [--no-plot] [--markdown]``.

For every setting in ``SETTINGS`` (TaskQueue fields: ``scaleDown.idleReplicaSeconds``, the
scale-down window, ``tasksPerReplica``, ``idleSecondsBeforeZero``; and the noise band
``policy.LOAD_NOISE_SIGMAS``, 0 being the release as it was before the band) it runs ``bench/policy_sim.py``'s
simulator on every trace under seeds 1..N, with the same reactive baseline and HPA+KEDA model,
and prints per trace and setting the medians (worker-seconds / the reactive baseline's, p95 wait,
scale events per hour) and in how many runs each of issue 16's targets is met. It then plots, per
trace, each setting's median worker-seconds ratio against its median p95 wait, with the
settings on the frontier (no other spends as little at as short a p95 and as few scale events,
and less in one of them) marked, the reactive
baseline, HPA+KEDA, the former and the current default marked, and the target region shaded, to
``docs/img/policy-frontier.png``, and the corner near the reactive baseline's wait, each point
numbered as in the table, to ``docs/img/policy-frontier-zoom.png``.

Every run's result is cached in ``.run/policy-frontier/<hash>.json``, keyed by setting, trace and
seed, where the hash covers the policy and the simulator's source: a rerun after a plot change or
with one more setting only simulates what is new. Seeds run in ``--jobs`` processes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import policy_sim as sim  # noqa: E402  (bench/ is not a package)

from stalk_operator import policy  # noqa: E402
from stalk_operator.defaults import TASKQUEUE_DEFAULTS  # noqa: E402


@dataclass(frozen=True)
class Setting:
    """One point of the grid: stalk's TaskQueue fields (None: the TaskQueue default) and the noise band."""

    name: str
    idle_replica_seconds: float | None = None
    scale_down_seconds: float | None = None
    tasks_per_replica: int = sim.TARGET_PER_REPLICA
    idle_seconds_before_zero: float | None = None
    noise_sigmas: float = policy.LOAD_NOISE_SIGMAS

    def spec(self) -> policy.ScalingSpec:
        spec = policy.ScalingSpec(min_replicas=0, max_replicas=sim.MAX_REPLICAS, tasks_per_replica=self.tasks_per_replica)
        if self.idle_replica_seconds is not None:
            spec = replace(spec, idle_replica_seconds=self.idle_replica_seconds)
        if self.scale_down_seconds is not None:
            spec = replace(spec, scale_down=policy.Behavior(self.scale_down_seconds))
        if self.idle_seconds_before_zero is not None:
            spec = replace(spec, idle_seconds_before_zero=self.idle_seconds_before_zero)
        return spec

    def key(self) -> str:
        """What the result depends on (not the name): the spec's values and the noise band."""
        s = self.spec()
        return (f"idle={s.idle_replica_seconds:g},"
                f"window={s.scale_down.stabilization_seconds:g},tpr={s.tasks_per_replica},"
                f"zero={s.idle_seconds_before_zero:g},sigmas={self.noise_sigmas:g}")


NEVER = 3600  # longer than any trace's quiet spell: no replica is released before the window
# What stalk shipped with before the noise band (idle replicas above the recommendation released
# after 30 s), and what it ships with now.
FORMER_DEFAULT = Setting("former default: idle 30 s, no band", idle_replica_seconds=30, noise_sigmas=0)
DEFAULT = Setting(f"default: idle {TASKQUEUE_DEFAULTS['scaleDown.idleReplicaSeconds']:g} s, band "
                  f"{policy.LOAD_NOISE_SIGMAS:g} sigma",
                  idle_replica_seconds=TASKQUEUE_DEFAULTS["scaleDown.idleReplicaSeconds"])

BAND = 3.0  # the default's LOAD_NOISE_SIGMAS, spelt out so that the grid does not move with it
IDLE = TASKQUEUE_DEFAULTS["scaleDown.idleReplicaSeconds"]

# Chosen from a wider look over seeds 1..3 (idleReplicaSeconds 0/5/10/30 x 1-4 sigmas, more
# windows): the points that make each trace's frontier, and the neighbours of the default. The
# window, tasksPerReplica and idleSecondsBeforeZero move away from the default one at a time.
SETTINGS: list[Setting] = [
    FORMER_DEFAULT,
    Setting("no early release (window 45 s only)", idle_replica_seconds=NEVER),
    # scaleDown.idleReplicaSeconds without the band (release down to the recommendation)
    *(Setting(f"idle {s} s, no band", idle_replica_seconds=s, noise_sigmas=0) for s in (0, 5, 15)),
    # the noise band: idle replicas beyond load + k sqrt(load) released after idleReplicaSeconds
    *(Setting(f"idle {s} s, band {k:g} sigma", idle_replica_seconds=s, noise_sigmas=k)
      for s, k in ((0, BAND), (5, 2), (5, BAND), (5, 4), (7, BAND), (10, 2), (10, BAND), (10, 4), (30, BAND))),
    # the scale-down window
    Setting("window 20 s, idle 30 s, no band", scale_down_seconds=20, idle_replica_seconds=30, noise_sigmas=0),
    Setting("window 30 s, else the default", scale_down_seconds=30, idle_replica_seconds=IDLE, noise_sigmas=BAND),
    # tasksPerReplica headroom (4 slots per replica)
    *(Setting(f"tasksPerReplica {t}, else the default", tasks_per_replica=t, idle_replica_seconds=IDLE,
              noise_sigmas=BAND) for t in (6, 8, 16, 32)),
    # idleSecondsBeforeZero
    Setting("idle before zero 30 s, else the default", idle_seconds_before_zero=30, idle_replica_seconds=IDLE,
            noise_sigmas=BAND),
]

MODELS = ("stalk", "reactive", "keda")
ZOOM_SECONDS = 3.0  # the zoomed plot: settings whose p95 wait is at most this much above the reactive baseline's
FIELDS = ("worker_seconds", "p95_wait", "mean_wait", "busy_stops", "killed_tasks", "scale_events", "hours")


def source_hash() -> str:
    """Cached results are only as good as the code that made them: the policy and the simulator."""
    digest = hashlib.sha256()
    # Not defaults.py: a setting's key spells out every value it runs with.
    for path in (ROOT / "operator" / "stalk_operator" / "policy.py", BENCH / "policy_sim.py", *sim.RECORDED):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def run_seed(seed: int, settings: list[Setting], want_baselines: bool) -> dict[str, dict]:
    """Every trace of one seed under the given settings (and the baselines); results by cache key."""
    out: dict[str, dict] = {}
    recorded = {path.stem: sim.recorded_trace(path) for path in sim.RECORDED}
    for trace, tasks in (sim.traces(random.Random(seed)) | recorded).items():
        def run(make_controller, grace: float, idle_first: bool) -> dict:
            r = sim.simulate(sim._fresh(tasks), make_controller, grace=grace, idle_first=idle_first, seed=seed)
            return {f: getattr(r, f) for f in FIELDS} | {"floor": sim.floor_worker_seconds(tasks)}

        if want_baselines:
            out[f"reactive|{trace}|{seed}"] = run(sim.ReactiveController, math.inf, True)
            out[f"keda|{trace}|{seed}"] = run(sim.KedaHpaController, sim.KUBERNETES_GRACE_SECONDS, False)
        for setting in settings:
            policy.LOAD_NOISE_SIGMAS = setting.noise_sigmas  # this process only, one run at a time
            spec = setting.spec()
            out[f"{setting.key()}|{trace}|{seed}"] = run(lambda: sim.StalkController(spec), math.inf, True)
    return out


def measure(settings: list[Setting], seeds: range, jobs: int, cache_path: Path) -> dict[str, dict]:
    cache: dict[str, dict] = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    work = []
    for seed in seeds:
        missing = [s for s in settings if not any(k.startswith(f"{s.key()}|") and k.endswith(f"|{seed}")
                                                  for k in cache)]
        baselines = not any(k.startswith("reactive|") and k.endswith(f"|{seed}") for k in cache)
        if missing or baselines:
            work.append((seed, list({s.key(): s for s in missing}.values()), baselines))
    if work:
        print(f"simulating {sum(len(m) for _, m, _ in work)} (setting, seed) pairs in {jobs} processes ...",
              file=sys.stderr)
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for results in pool.map(run_seed, *zip(*work)):
                cache |= results
                cache_path.parent.mkdir(parents=True, exist_ok=True)
                cache_path.write_text(json.dumps(cache))
    return cache


@dataclass
class Row:
    """One setting on one trace: medians over the seeds, and runs meeting each target."""

    setting: Setting
    trace: str
    worker_ratio: float  # stalk / reactive, median of the per-seed ratios
    keda_ratio: float  # stalk / HPA+KEDA
    p95: float
    events: float  # scale events per hour
    met: dict[str, int]
    runs: int


def rows_for(setting_key: str, trace: str, seeds: range, cache: dict) -> tuple[list[dict], list[dict], list[dict]]:
    return tuple([cache[f"{model}|{trace}|{seed}"] for seed in seeds]
                 for model in (setting_key, "reactive", "keda"))


def summarize(settings: list[Setting], traces: list[str], seeds: range, cache: dict) -> list[Row]:
    rows = []
    for setting in settings:
        for trace in traces:
            stalk, reactive, keda = rows_for(setting.key(), trace, seeds, cache)
            met = {"vs reactive": 0, "vs KEDA": 0, "no busy stop": 0, "churn": 0}
            for s, r, k in zip(stalk, reactive, keda):
                met["vs reactive"] += (s["worker_seconds"] <= sim.REACTIVE_WORKER_TARGET * r["worker_seconds"]
                                       and s["p95_wait"] <= r["p95_wait"] + sim.REACTIVE_WAIT_SLACK_SECONDS)
                met["vs KEDA"] += s["worker_seconds"] <= k["worker_seconds"] and s["p95_wait"] < k["p95_wait"]
                met["no busy stop"] += not s["busy_stops"] and not s["killed_tasks"]
                met["churn"] += s["scale_events"] <= r["scale_events"]
            rows.append(Row(setting, trace,
                            statistics.median(s["worker_seconds"] / r["worker_seconds"] for s, r in zip(stalk, reactive)),
                            statistics.median(s["worker_seconds"] / k["worker_seconds"] for s, k in zip(stalk, keda)),
                            statistics.median(s["p95_wait"] for s in stalk),
                            statistics.median(s["scale_events"] / s["hours"] for s in stalk), met, len(stalk)))
    return rows


def baseline_point(model: str, trace: str, seeds: range, cache: dict) -> tuple[float, float, float]:
    """(worker-seconds / reactive, p95 wait, events per hour), medians over the seeds."""
    runs = [cache[f"{model}|{trace}|{seed}"] for seed in seeds]
    reactive = [cache[f"reactive|{trace}|{seed}"] for seed in seeds]
    return (statistics.median(m["worker_seconds"] / r["worker_seconds"] for m, r in zip(runs, reactive)),
            statistics.median(m["p95_wait"] for m in runs), statistics.median(m["scale_events"] / m["hours"] for m in runs))


def on_frontier(rows: list[Row]) -> list[Row]:
    """The rows no other row beats: none spends as little or less, waits as little or less at the p95
    and changes the replicas as seldom or more seldom, and is better in one of the three.

    Churn is part of it because issue 16 makes it a limit: a setting that saves worker-seconds by
    restarting pods more often than the reactive baseline is not a better choice, only another one.
    """
    def beats(o: Row, r: Row) -> bool:
        return (o.worker_ratio <= r.worker_ratio and o.p95 <= r.p95 and o.events <= r.events
                and (o.worker_ratio, o.p95, o.events) != (r.worker_ratio, r.p95, r.events))

    return sorted((r for r in rows if not any(beats(o, r) for o in rows)), key=lambda r: (r.p95, r.worker_ratio))


def print_table(rows: list[Row], traces: list[str], seeds: range, cache: dict) -> None:
    width = max(len(r.setting.name) for r in rows)
    header = (f"{'trace':<12} {'setting':<{width}} | {'w-s/react':>9} {'w-s/KEDA':>8} | {'p95 wait':>8} | "
              f"{'events/h':>8} | runs meeting: vs react, vs KEDA, no busy stop, churn")
    print(header)
    print("-" * len(header))
    for trace in traces:
        for model, name in (("reactive", "reactive baseline"), ("keda", "HPA+KEDA")):
            ratio, p95, events = baseline_point(model, trace, seeds, cache)
            keda_ratio = statistics.median(cache[f"{model}|{trace}|{s}"]["worker_seconds"]
                                           / cache[f"keda|{trace}|{s}"]["worker_seconds"] for s in seeds)
            print(f"{trace:<12} {name:<{width}} | {ratio:>9.2f} {keda_ratio:>8.2f} | {p95:>7.1f}s | {events:>8.0f} |")
        trace_rows = [r for r in rows if r.trace == trace]
        best = {id(r) for r in on_frontier(trace_rows)}
        for r in trace_rows:
            mark = "*" if id(r) in best else " "
            met = ", ".join(f"{n:>2}" for n in r.met.values())
            print(f"{trace:<12} {r.setting.name:<{width}} | {r.worker_ratio:>9.2f} {r.keda_ratio:>8.2f} | "
                  f"{r.p95:>7.1f}s | {r.events:>8.0f} | {met}  {mark}")
    print(f"medians over seeds {seeds.start}..{seeds.stop - 1}; * on the trace's frontier (no other setting spends as "
          f"little, waits as little at the p95 and scales as seldom, and does better in one of them); targets per run (issue 16): vs react: worker-s <= "
          f"{sim.REACTIVE_WORKER_TARGET}x the reactive baseline's at a p95 <= its + "
          f"{sim.REACTIVE_WAIT_SLACK_SECONDS:g}s; vs KEDA: worker-s <= and p95 <; churn: scale events <= reactive's")


def print_markdown(rows: list[Row], traces: list[str], seeds: range, cache: dict) -> None:
    """The same medians as two tables for docs/benchmarks.md: one row per setting, one column per trace."""
    print(f"| # | setting | {' | '.join(traces)} |")
    print(f"|---:|---|{'---|' * len(traces)}")
    for model, name in (("reactive", "reactive baseline"), ("keda", "HPA+KEDA (defaults)")):
        cells = []
        for trace in traces:
            ratio, p95, events = baseline_point(model, trace, seeds, cache)
            cells.append(f"{ratio:.2f}, {p95:,.1f} s, {events:.0f}")
        print(f"| | {name} | {' | '.join(cells)} |")
    by = {(r.setting.name, r.trace): r for r in rows}
    fronts = {trace: {id(r) for r in on_frontier([r for r in rows if r.trace == trace])} for trace in traces}
    names = list(dict.fromkeys(r.setting.name for r in rows))
    for number, name in enumerate(names, start=1):
        cells = []
        for trace in traces:
            r = by[name, trace]
            cell = f"{r.worker_ratio:.2f}, {r.p95:,.1f} s, {r.events:.0f}"
            cells.append(f"**{cell}**" if id(r) in fronts[trace] else cell)
        print(f"| {number} | {name} | {' | '.join(cells)} |")
    print()
    print(f"| # | setting: runs meeting vs reactive / vs KEDA / no busy stop / churn | {' | '.join(traces)} |")
    print(f"|---:|---|{'---|' * len(traces)}")
    for number, name in enumerate(names, start=1):
        print(f"| {number} | {name} | {' | '.join('/'.join(str(n) for n in by[name, t].met.values()) for t in traces)} |")


def plot(rows: list[Row], traces: list[str], seeds: range, cache: dict, out: Path, *, zoom: bool = False) -> None:
    """Per trace, each setting's median worker-seconds ratio (y) against its median p95 wait (x).

    ``zoom``: only what waits at most ZOOM_SECONDS longer than the reactive baseline (or 25 % longer,
    on traces where waits are minutes), each point numbered as in the table (``--markdown``): the
    corner where the defaults are chosen.
    """
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    numbers = {name: i for i, name in enumerate(dict.fromkeys(r.setting.name for r in rows), start=1)}
    columns = 3
    fig, axes = plt.subplots(math.ceil(len(traces) / columns), columns, figsize=(15, 4.6 * math.ceil(len(traces) / 3)))
    for ax, trace in zip(axes.flat, traces):
        reactive_p95 = baseline_point("reactive", trace, seeds, cache)[1]
        keda_ratio, keda_p95, _ = baseline_point("keda", trace, seeds, cache)
        trace_rows = [r for r in rows if r.trace == trace]
        front = on_frontier(trace_rows)
        if zoom:
            limit = max(reactive_p95 + ZOOM_SECONDS, 1.25 * reactive_p95)
            trace_rows = [r for r in trace_rows if r.p95 <= limit]
            front = [r for r in front if r.p95 <= limit]
        ax.scatter([r.p95 for r in trace_rows], [r.worker_ratio for r in trace_rows], s=14, color="#a0aec0",
                   label="settings tried", zorder=2)
        ax.scatter([r.p95 for r in front], [r.worker_ratio for r in front], s=34, facecolors="none",
                   edgecolors="#4a5568", linewidths=0.9, label="on the frontier (with churn)", zorder=2)
        flat = [r for r in front if not any(o.worker_ratio < r.worker_ratio and o.p95 <= r.p95 for o in front)]
        ax.plot([r.p95 for r in flat], [r.worker_ratio for r in flat], color="#4a5568", linewidth=0.8,
                drawstyle="steps-post", label="frontier of worker-s against p95", zorder=2)
        ax.fill_between([0, reactive_p95 + sim.REACTIVE_WAIT_SLACK_SECONDS], 0, sim.REACTIVE_WORKER_TARGET,
                        color="#c6f6d5", alpha=0.6, label="target: <= 0.9x at p95 <= +1 s", zorder=1)
        ax.scatter([reactive_p95], [1.0], marker="s", s=50, color="#2f855a", label="reactive baseline", zorder=3)
        if not zoom:
            ax.scatter([keda_p95], [keda_ratio], marker="^", s=60, color="#dd6b20", label="HPA+KEDA (defaults)",
                       zorder=3)
        for setting, marker, color, label in ((FORMER_DEFAULT, "o", "#718096", "former default"),
                                               (DEFAULT, "*", "#2b6cb0", "default")):
            r = next((r for r in trace_rows if r.setting.key() == setting.key()), None)
            if r is not None:
                ax.scatter([r.p95], [r.worker_ratio], marker=marker, s=140 if marker == "*" else 60,
                           facecolors=color if marker == "*" else "none", edgecolors=color, label=label, zorder=4)
        if zoom:
            for r in trace_rows:
                ax.annotate(str(numbers[r.setting.name]), (r.p95, r.worker_ratio), fontsize=7, color="#2d3748",
                            xytext=(3, 2), textcoords="offset points")
        shown = [r.p95 for r in trace_rows] + [reactive_p95] + ([] if zoom else [keda_p95])
        ratios = [r.worker_ratio for r in trace_rows] + [1.0] + ([] if zoom else [keda_ratio])
        if max(shown) > 4 * min(shown):  # waits over decades (long tasks, HPA+KEDA): a log axis
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlim(min(shown) / 1.15, max(shown) * 1.15)
        else:
            margin = max(0.5, 0.08 * (max(shown) - min(shown)))
            ax.set_xlim(min(shown) - margin, max(shown) + margin)
        ax.set_title(f"{trace}", fontsize=10)
        ax.set_xlabel("p95 wait (s)")
        ax.set_ylabel("worker-seconds / reactive baseline")
        ax.grid(alpha=0.3, which="both")
        ax.set_ylim(min(0.6, min(ratios) - 0.05) if zoom else 0, max(ratios) + 0.05 if zoom else max(ratios) * 1.1)
    for ax in list(axes.flat)[len(traces):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=7, fontsize=8)
    what = (f"the settings waiting at most {ZOOM_SECONDS:g} s (or 25 %) longer than the reactive baseline, numbered "
            "as in the table" if zoom else "worker-seconds against p95 wait (lower left is better)")
    fig.suptitle(f"stalk's settings, medians over seeds {seeds.start}..{seeds.stop - 1}: {what}", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="seeds 1..N per trace (default 20)")
    parser.add_argument("--jobs", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--only", action="append", default=[],
                        help="only the settings whose name contains this (repeatable; the defaults always run)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "policy-frontier.png")
    parser.add_argument("--no-plot", action="store_true", help="print the table only")
    parser.add_argument("--markdown", action="store_true", help="also print the tables of docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.jobs < 1:
        parser.error("--seeds and --jobs must be at least 1")
    chosen = [s for s in SETTINGS if not args.only or any(o in s.name for o in args.only)]
    settings = [DEFAULT, *(s for s in [FORMER_DEFAULT, *chosen] if s.key() != DEFAULT.key())]
    settings = list({s.name: s for s in settings}.values())  # FORMER_DEFAULT is also in SETTINGS
    seeds = range(1, args.seeds + 1)
    cache = measure(settings, seeds, args.jobs, ROOT / ".run" / "policy-frontier" / f"{source_hash()}.json")
    traces = list(dict.fromkeys(key.split("|")[1] for key in cache if key.startswith("reactive|")))
    rows = summarize(settings, traces, seeds, cache)
    print_table(rows, traces, seeds, cache)
    if args.markdown:
        print()
        print_markdown(rows, traces, seeds, cache)
    if not args.no_plot:
        plot(rows, traces, seeds, cache, args.out)
        plot(rows, traces, seeds, cache, args.out.with_name(f"{args.out.stem}-zoom{args.out.suffix}"), zoom=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
