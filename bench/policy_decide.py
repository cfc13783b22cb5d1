"""Cost of one policy decision per queue per tick, against the policy at a baseline commit.

    .venv/bin/python bench/policy_decide.py [--queues 1000] [--ticks 60] [--baseline REV]

The operator calls ``decide`` for every TaskQueue every second and persists ``History.to_dict()``
in status (the tick loop also copies the history through ``from_dict(to_dict())`` before a
possible scale-down). This runs that per-queue work for ``--queues`` queues with a noisy load at
1 s ticks and the default 60 s scale-down window: one window of ticks to fill the history, then
``--ticks`` measured ticks. The same observations go through the policy in this tree and the one
at ``--baseline`` (``git show REV:operator/stalk_operator/policy.py``), interleaved tick by tick
so that both see the same machine. Prints CPU microseconds per queue-tick (decide alone, and with
to_dict + the copy), the recommendations kept per queue, and the ratio now / baseline.
Run it under the heavy lock: ``flock /tmp/stalk-heavy.lock .venv/bin/python bench/policy_decide.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
POLICY = "operator/stalk_operator/policy.py"
# The last commit whose History kept one recommendation per tick.
BASELINE = "df8f93c"


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def loads(queues: int, ticks: int, seed: int) -> list[list[tuple[int, int]]]:
    """(waiting, in flight) per tick per queue: a steady mean with Poisson-like noise, a few busy queues."""
    rng = random.Random(seed)
    means = [rng.choice([0, 0, 3, 12, 40]) for _ in range(queues)]
    return [[(max(0, round(rng.gauss(m, m ** 0.5))) if m else 0, max(0, round(rng.gauss(m, m ** 0.5)) // 2))
             for m in means] for _ in range(ticks)]


class Run:
    """One policy module deciding for every queue, with its CPU time per part."""

    def __init__(self, module: ModuleType, queues: int):
        self.m = module
        self.spec = module.ScalingSpec(max_replicas=50)
        self.histories = [module.History() for _ in range(queues)]
        self.replicas = [1] * queues
        self.decide_cpu = self.persist_cpu = 0.0

    def tick(self, now: float, load: list[tuple[int, int]], measure: bool) -> None:
        m, spec, replicas = self.m, self.spec, self.replicas
        observations = [m.Observation(waiting=w, in_flight=f, oldest_wait_seconds=None, current_replicas=replicas[i])
                        for i, (w, f) in enumerate(load)]
        start = time.process_time()
        for i, (history, observation) in enumerate(zip(self.histories, observations)):
            replicas[i] = m.decide(observation, spec, history, now).replicas
        middle = time.process_time()
        for history in self.histories:
            m.History.from_dict(history.to_dict())  # the loop's copy before a scale-down
            history.to_dict()  # persisted in status
        end = time.process_time()
        if measure:
            self.decide_cpu += middle - start
            self.persist_cpu += end - middle

    def kept(self) -> float:
        return sum(len(h.recommendations) for h in self.histories) / len(self.histories)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queues", type=int, default=1000)
    parser.add_argument("--ticks", type=int, default=60, help="measured ticks, after one window of warm-up")
    parser.add_argument("--baseline", default=BASELINE, help=f"git revision to compare with (default {BASELINE})")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="stalk-policy-") as tmp:
        old_source = subprocess.run(["git", "show", f"{args.baseline}:{POLICY}"], cwd=ROOT, check=True,
                                    capture_output=True, text=True).stdout
        (Path(tmp) / "policy_baseline.py").write_text(old_source)
        runs = {"baseline": Run(load(Path(tmp) / "policy_baseline.py", "policy_baseline"), args.queues),
                "now": Run(load(ROOT / POLICY, "policy_now"), args.queues)}
    warmup = int(runs["now"].spec.scale_down.stabilization_seconds)
    series = loads(args.queues, warmup + args.ticks, args.seed)
    for tick, load_now in enumerate(series):
        for run in runs.values():
            run.tick(1_000_000.0 + tick, load_now, measure=tick >= warmup)

    calls = args.queues * args.ticks
    print(f"{args.queues} queues, {args.ticks} measured 1 s ticks after {warmup} s of warm-up, "
          f"baseline {args.baseline}; CPU microseconds per queue per tick:")
    print(f"{'policy':<9} {'decide':>8} {'to_dict+copy':>13} {'total':>8} {'kept per queue':>15}")
    for name, run in runs.items():
        print(f"{name:<9} {1e6 * run.decide_cpu / calls:>8.1f} {1e6 * run.persist_cpu / calls:>13.1f} "
              f"{1e6 * (run.decide_cpu + run.persist_cpu) / calls:>8.1f} {run.kept():>15.1f}")
    old, new = runs["baseline"], runs["now"]
    print(f"ratio now / baseline: decide {new.decide_cpu / old.decide_cpu:.2f}, to_dict+copy "
          f"{new.persist_cpu / old.persist_cpu:.2f}, total "
          f"{(new.decide_cpu + new.persist_cpu) / (old.decide_cpu + old.persist_cpu):.2f}; per tick at "
          f"{args.queues} queues: {1e3 * (old.decide_cpu + old.persist_cpu) / args.ticks:.1f} ms -> "
          f"{1e3 * (new.decide_cpu + new.persist_cpu) / args.ticks:.1f} ms CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
