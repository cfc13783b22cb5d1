"""One operator, 1,000 TaskQueues on one Redis: tick duration, Redis round trips, CPU share and memory.

    .venv/bin/python bench/operator_scale.py                 # 1,000 TaskQueues, ~5 minutes
    .venv/bin/python bench/operator_scale.py --count 100     # a smaller run
    .venv/bin/python bench/operator_scale.py --read-cost     # only Redis: the client cost of one read of 1,000 queues

Starts everything itself on loopback and stops it at the end, also on Ctrl-C or an error (the
harness of ``bench/operator_reaction.py``): a private control plane (kwok nodes), a private
``redis-server``, the CRD, and ``--count`` Deployments (0 replicas) each with its own TaskQueue
(queue ``q-NNNN``, all on the one Redis), created with server-side apply, 100 objects per kubectl
call. ``--with-tasks`` of the queues get a backlog (1-50 tasks each, a fifth of them with priority
6, which kombu keeps in a separate list), sent with a plain Celery client. Only the first
``--scaling`` TaskQueues may scale (maxReplicas 2, so at most 2 x ``--scaling`` kwok pods); the
others hold their backlog below ``activationTasks`` and stay at 0: the cluster has 2 cores and
1,000 Deployments with pods would measure the cluster, not the operator. Everything else in the
TaskQueues, and every operator setting, is a default (pollSeconds 1, status every 5 s).

While measuring, a producer adds ``--rate`` tasks a second to random queues of the backlog, and a
kombu consumer takes ``--deliver`` tasks a second from the scaling queues without acking them for
10 s (``basic_get(no_ack=False)``: kombu files them in its ``unacked`` hash and index exactly as a
Celery worker with acks_late does), so waiting, in-flight and the status writes keep moving.

Measured, over a ``--seconds`` window after a ``--warmup``:
- tick duration: the operator's own histogram ``stalk_operator_tick_duration_seconds`` (read,
  decide and act for every TaskQueue of the broker), p50/p99 interpolated in its buckets as
  Prometheus' ``histogram_quantile`` does, the mean from ``_sum``/``_count``;
- Redis commands per tick: ``INFO commandstats`` deltas of the commands the operator's reader
  sends (LLEN, LINDEX, ZRANGE, HMGET; the producer and consumer use others), over the tick count;
- Redis round trips per tick: ``strace -f -yy`` on the operator for ``--strace-seconds``, once
  with the consumer paused and once with it taking tasks. redis-py is synchronous: a round trip
  is one run of ``sendto`` calls on a socket connected to the Redis port followed by the reads of
  the replies, so the number of send runs per socket is the number of round trips. (strace slows
  the process: tick durations are not taken from these windows.)
- CPU share: utime + stime from /proc/PID/stat over the window, divided by the wall time;
- memory: VmRSS and VmHWM (peak) from /proc/PID/status at the end;
- the API server's own counters (``apiserver_request_total``) for the operator's writes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from operator_reaction import (  # noqa: E402 - the shared harness, next to this file
    BenchError, cpu_seconds, harness, load_average, parse_metrics, proc_status,
    run, taskqueue, wait_for, worker_deployment,
)

TICK = "stalk_operator_tick_duration_seconds"
PLAN = "stalk_operator_tick_plan_duration_seconds"  # the tick up to its API calls
READER_COMMANDS = ("llen", "lindex", "zrange", "hmget")  # what QueueReader.read's script runs
TARGET_TICK_SECONDS = 0.1
TARGET_RSS_MB = 300
HOLD_SECONDS = 10.0  # how long the consumer keeps a task unacked


def histogram(metrics: dict, name: str) -> tuple[dict[float, float], float, float]:
    buckets = {}
    for (sample, labels), value in metrics.items():
        if sample == f"{name}_bucket":
            buckets[float(dict(labels)["le"])] = value
    return buckets, metrics.get((f"{name}_count", ()), 0.0), metrics.get((f"{name}_sum", ()), 0.0)


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus' histogram_quantile over cumulative bucket counts (le -> count)."""
    bounds = sorted(buckets)
    total = buckets[math.inf]
    if total == 0:
        return math.nan
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if math.isinf(bound):
                return lower  # above the highest finite bucket: its bound, as Prometheus does
            return lower + (bound - lower) * (rank - below) / max(buckets[bound] - below, 1e-12)
        lower, below = bound, buckets[bound]
    return lower


# The reader runs its script with EVALSHA_RO (a read-only ACL user cannot EVALSHA), EVALSHA on a
# Redis older than 7: INFO commandstats counts the two apart.
SCRIPT_COMMANDS = ("cmdstat_evalsha_ro", "cmdstat_evalsha")
SCRIPT_NAMES = ("EVALSHA_RO", "EVALSHA", "EVAL_RO", "EVAL")  # the same, as strace sees them sent


def script_stats(commands: dict) -> dict[str, int]:
    """Calls and microseconds of the reader's script, from INFO commandstats."""
    return {key: sum(commands.get(name, {}).get(key, 0) for name in SCRIPT_COMMANDS) for key in ("calls", "usec")}


def redis_info(r) -> dict[str, Any]:
    stats = r.info("stats")
    commands = r.info("commandstats")
    return {"total_commands_processed": stats["total_commands_processed"],
            "calls": {name.removeprefix("cmdstat_"): value["calls"] for name, value in commands.items()},
            "script_usec": script_stats(commands)["usec"]}


def apiserver_writes(h) -> dict[str, float]:
    """apiserver_request_total of write verbs, by resource/subresource."""
    text = h.kubectl("get", "--raw", "/metrics", timeout=60)
    out: dict[str, float] = defaultdict(float)
    for (name, labels), value in parse_metrics(text).items():
        if name != "apiserver_request_total":
            continue
        labels = dict(labels)
        if labels.get("verb") in ("PATCH", "POST", "PUT", "APPLY") and labels.get("resource") in (
                "taskqueues", "deployments", "events", "pods", "leases"):
            key = f"{labels['verb']} {labels['resource']}" + (f"/{labels['subresource']}" if labels.get("subresource") else "")
            out[key] += value
    return out


class Load(threading.Thread):
    """The producer (``rate`` tasks/s to random backlog queues) and the consumer (``deliver`` tasks/s held unacked)."""

    def __init__(self, url: str, backlog: list[str], scaling: list[str], rate: float, deliver: float,
                 rng: random.Random) -> None:
        super().__init__(daemon=True, name="load")
        self.url, self.backlog, self.scaling = url, backlog, scaling
        self.rate, self.deliver, self.rng = rate, deliver, rng
        self.stopping = threading.Event()
        self.delivering = threading.Event()
        self.delivering.set()
        self.sent = self.taken = 0
        self.error: Exception | None = None

    def run(self) -> None:
        from celery import Celery
        from kombu import Connection

        app = Celery("producer", broker=self.url, set_as_current=False)
        held: list[tuple[float, Any]] = []
        try:
            with app.connection_for_write() as conn, Connection(self.url) as consumer:
                channel = consumer.default_channel
                step = 0.05
                next_send = next_take = time.monotonic()
                while not self.stopping.is_set():
                    now = time.monotonic()
                    while self.rate and now >= next_send and self.backlog:
                        queue = self.rng.choice(self.backlog)
                        app.send_task("bench.noop", queue=queue, connection=conn,
                                      priority=6 if self.rng.random() < 0.2 else None)
                        self.sent += 1
                        next_send += 1 / self.rate
                    while self.deliver and self.delivering.is_set() and now >= next_take and self.scaling:
                        message = channel.basic_get(queue=self.rng.choice(self.scaling), no_ack=False)
                        if message is not None:
                            held.append((now, message))
                            self.taken += 1
                        next_take += 1 / self.deliver
                    if not self.delivering.is_set():
                        next_take = now
                    while held and now - held[0][0] >= HOLD_SECONDS:
                        held.pop(0)[1].ack()
                    time.sleep(step)
                for _, message in held:
                    message.ack()
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc
        finally:
            app.close()


def strace_round_trips(h, pid: int, seconds: float, redis_port: int) -> dict[str, Any]:
    """Round trips to Redis, counted from the operator's own socket calls, and the ticks in the window."""
    out = h.workdir / f"strace-{time.monotonic_ns()}.txt"
    ticks_before = histogram(h.metrics(), TICK)[1]
    h._start("strace", ["strace", "-f", "-qq", "-yy", "-s", "48", "-e", "trace=sendto,recvfrom,sendmsg,recvmsg",
                        "-o", str(out), "-p", str(pid)])
    time.sleep(1.0)  # strace attaches to every thread
    ticks_start = histogram(h.metrics(), TICK)[1]
    time.sleep(seconds)
    h._stop("strace")
    ticks_end = histogram(h.metrics(), TICK)[1]
    target = f"->127.0.0.1:{redis_port}]"
    call = re.compile(r"^\d+\s+(sendto|recvfrom|sendmsg|recvmsg)\((\d+)<TCP:\[([^\]]+)\]>")
    # The first command of a send run (RESP: *<n>\r\n$<len>\r\nNAME), to tell the tick's read from the rest.
    command = re.compile(r'"\*\d+\\r\\n\$\d+\\r\\n([A-Za-z_]+)')
    sent: list[tuple[str, str]] = []  # (thread, first command) of each send run
    runs: dict[str, int] = defaultdict(int)
    threads: dict[str, set[str]] = defaultdict(set)
    last: dict[str, str] = {}
    sends = recvs = 0
    for line in out.read_text(errors="replace").splitlines():
        m = call.match(line)
        if not m or target not in m.group(3) + "]":
            continue
        kind = "send" if m.group(1) in ("sendto", "sendmsg") else "recv"
        sock = m.group(3)
        threads[sock].add(line.split(None, 1)[0])
        if kind == "send":
            sends += 1
            if last.get(sock) != "send":
                runs[sock] += 1
                name = command.search(line)
                sent.append((line.split(None, 1)[0], name.group(1).upper() if name else "?"))
        else:
            recvs += 1
        last[sock] = kind
    out.unlink(missing_ok=True)
    # The window is counted from strace's start (the runs) to its stop; ticks over the same span.
    ticks = ticks_end - ticks_before
    # The tick's read is the script sent from the broker's read thread (the thread sending most
    # scripts); anything else (a remote-control call, the unconsumed-lists SCAN) is counted apart.
    scripts = [thread for thread, name in sent if name in SCRIPT_NAMES]
    reader = max(set(scripts), key=scripts.count) if scripts else None
    reads = sum(thread == reader and name in SCRIPT_NAMES for thread, name in sent)
    by_command: dict[str, int] = defaultdict(int)
    for thread, name in sent:
        if not (thread == reader and name in SCRIPT_NAMES):
            by_command[name] += 1
    return {"round_trips": sum(runs.values()), "sockets": len(runs), "sendto": sends, "recvfrom": recvs,
            "read_round_trips": reads, "reads_per_tick": reads / ticks if ticks else math.nan,
            "others_by_command": dict(sorted(by_command.items())),
            "ticks": ticks, "ticks_attached": ticks_end - ticks_start,
            "per_socket": {sock: {"round_trips": n, "threads": sorted(threads[sock])} for sock, n in runs.items()},
            "per_tick": sum(runs.values()) / ticks if ticks else math.nan}


def run_scale(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    started_at = datetime.now(UTC)
    load_start = load_average()
    result: dict[str, Any] = {"started_at": started_at, "load_start": load_start}
    with harness("stalk-bench-scale-", keep=args.keep) as h:
        print(f"starting a private control plane in {h.workdir}/cluster ...", flush=True)
        result["cluster_seconds"] = h.start_cluster()
        url = h.start_redis()
        print(f"cluster ready in {result['cluster_seconds']:.1f}s; redis on {url}", flush=True)
        r = h.redis()

        names = [f"{i:04d}" for i in range(args.count)]
        scaling = names[:args.scaling]
        backlog = names[:args.with_tasks]
        # Deployments first, so no TaskQueue points at a target that does not exist yet.
        objects = [worker_deployment(f"w-{n}", labels={"stalk.dev/bench": "scale"}) for n in names]
        objects += [taskqueue(f"tq-{n}", queue=f"q-{n}", broker_url=url, target=f"w-{n}", maxReplicas=2,
                              activationTasks=0 if i < args.scaling else 1000) for i, n in enumerate(names)]
        t = time.monotonic()
        h.apply(objects, batch=100)
        result["apply_seconds"] = time.monotonic() - t
        print(f"applied {len(objects)} objects (server-side apply, 100 per call) in {result['apply_seconds']:.1f}s",
              flush=True)

        # Let the controller-manager finish with the new Deployments (ReplicaSets, status) first: on 2
        # cores its catching up would load the machine and the API server during the measurement.
        result["settle_seconds"] = h.wait_settled("stalk.dev/bench=scale", args.count)
        print(f"Deployments settled (observedGeneration, conditions) after {result['settle_seconds']:.0f}s", flush=True)

        from celery import Celery

        app = Celery("producer", broker=url, set_as_current=False)
        sent = 0
        with app.connection_for_write() as conn:
            for n in backlog:
                for _ in range(rng.randint(1, 50)):
                    app.send_task("bench.noop", queue=f"q-{n}", connection=conn,
                                  priority=6 if rng.random() < 0.2 else None)
                    sent += 1
        app.close()
        result["backlog_tasks"] = sent
        print(f"{sent} tasks in {len(backlog)} queues", flush=True)

        t = time.monotonic()
        proc = h.start_operator(**dict(kv.split("=", 1) for kv in args.operator_env))
        pid = proc.pid
        wait_for(lambda: sum(1 for (name, _), _v in h.metrics().items() if name == "stalk_taskqueue_current_replicas")
                 >= args.count, deadline=300, what=f"the operator to tick all {args.count} TaskQueues", interval=0.5,
                 alive=lambda: h.check("operator"))
        result["first_full_tick_seconds"] = time.monotonic() - t
        # The first tick writes every TaskQueue's status; it ends when all those writes are done.
        wait_for(lambda: histogram(h.metrics(), TICK)[1] >= 1, deadline=600, what="the first tick to finish",
                 interval=0.5, alive=lambda: h.check("operator"))
        result["first_tick_done_seconds"] = time.monotonic() - t
        buckets, count, total = histogram(h.metrics(), TICK)
        result["warmup_ticks"] = (count, total)
        print(f"operator measured all {args.count} TaskQueues {result['first_full_tick_seconds']:.1f}s after its start "
              f"({count:.0f} ticks so far, {total:.1f}s in ticks); warming up {args.warmup}s", flush=True)

        load = Load(url, [f"q-{n}" for n in backlog], [f"q-{n}" for n in scaling], args.rate, args.deliver, rng)
        load.start()
        time.sleep(args.warmup)
        h.check("operator")

        # The measured window.
        m0, i0, api0, c0, w0 = h.metrics(), redis_info(r), apiserver_writes(h), cpu_seconds(pid), time.monotonic()
        sent0, taken0 = load.sent, load.taken
        deadline = w0 + args.seconds
        while time.monotonic() < deadline:
            h.check("operator")
            if load.error:
                raise BenchError(f"load thread failed: {load.error!r}")
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        m1, i1, c1, w1 = h.metrics(), redis_info(r), cpu_seconds(pid), time.monotonic()
        api1 = apiserver_writes(h)
        sent1, taken1 = load.sent, load.taken
        mem = proc_status(pid)

        b0, n0, s0 = histogram(m0, TICK)
        b1, n1, s1 = histogram(m1, TICK)
        window = {le: b1[le] - b0.get(le, 0) for le in b1}
        p0, p1 = histogram(m0, PLAN)[0], histogram(m1, PLAN)[0]
        plan_window = {le: p1[le] - p0.get(le, 0) for le in p1}
        ticks = n1 - n0
        calls = {c: i1["calls"].get(c, 0) - i0["calls"].get(c, 0) for c in READER_COMMANDS}
        result.update({
            "window_seconds": w1 - w0,
            "ticks": ticks,
            "tick_p50": histogram_quantile(0.5, window), "tick_p90": histogram_quantile(0.9, window),
            "tick_p99": histogram_quantile(0.99, window),
            "tick_mean": (s1 - s0) / ticks if ticks else math.nan,
            "plan_p50": histogram_quantile(0.5, plan_window), "plan_p99": histogram_quantile(0.99, plan_window),
            "plan_buckets": {str(le): plan_window[le] for le in sorted(plan_window)},
            "tick_max_bucket": next((le for le in sorted(window) if window[le] >= ticks), math.inf),
            "share_within_target": window.get(TARGET_TICK_SECONDS, 0) / ticks if ticks else math.nan,
            "buckets": {str(le): window[le] for le in sorted(window)},
            "reader_calls": calls,
            # One ZRANGE of kombu's unacked index per read: the exact number of reads in the window.
            "reader_commands_per_tick": sum(calls.values()) / calls["zrange"] if calls["zrange"] else math.nan,
            # Redis runs nothing else while the read script runs: its time per read.
            "script_ms_per_read": ((i1["script_usec"] - i0["script_usec"]) / 1000 / calls["zrange"]
                                   if calls["zrange"] else math.nan),
            "all_commands": i1["total_commands_processed"] - i0["total_commands_processed"],
            "cpu_share": (c1 - c0) / (w1 - w0),
            "rss_kb": mem.get("VmRSS"), "hwm_kb": mem.get("VmHWM"),
            "api_writes": {k: api1.get(k, 0) - api0.get(k, 0) for k in sorted(set(api1) | set(api0))
                           if api1.get(k, 0) - api0.get(k, 0)},
            "produced": sent1 - sent0, "delivered": taken1 - taken0,
            "scale_events": {d: (m1.get(("stalk_operator_scale_events_total", (("direction", d),))) or 0)
                             for d in ("up", "down")},
            "scale_events_in_window": {
                d: (m1.get(("stalk_operator_scale_events_total", (("direction", d),))) or 0)
                - (m0.get(("stalk_operator_scale_events_total", (("direction", d),))) or 0) for d in ("up", "down")},
            "broker_errors": sum(v for (name, _), v in m1.items() if name == "stalk_operator_broker_errors_total"),
            "api_errors": sum(v for (name, _), v in m1.items() if name == "stalk_operator_api_errors_total"),
        })
        print(f"window {result['window_seconds']:.0f}s: {ticks:.0f} ticks, p50 {result['tick_p50'] * 1000:.0f} ms, "
              f"p99 {result['tick_p99'] * 1000:.0f} ms, CPU {result['cpu_share']:.0%} of a core", flush=True)

        # Round trips, counted with strace: consumer paused (no new deliveries), then taking tasks.
        if args.strace_seconds > 0:
            load.delivering.clear()
            time.sleep(HOLD_SECONDS + 2)  # every held task acked, no new tag in kombu's unacked index
            result["strace_idle"] = strace_round_trips(h, pid, args.strace_seconds, h.redis_port)
            load.delivering.set()
            time.sleep(2)
            result["strace_delivering"] = strace_round_trips(h, pid, args.strace_seconds, h.redis_port)
        load.stopping.set()
        load.join(15)
        result["rss_end_kb"] = proc_status(pid)
        result["operator_warnings"] = [line for line in h.tail("operator", 5000).splitlines()
                                       if " WARNING " in line or " ERROR " in line]
        r.close()
    result["load_end"] = load_average()
    return result


def pipelined_read(client, queues: list[str]) -> None:
    """The reader before its script (up to 2026-11-23): one pipeline, LLEN + LINDEX -1 per list, and the
    ZRANGE of kombu's unacked index (replies fetched, not interpreted). For --read-cost only."""
    from kombu.transport.redis import PRIORITY_STEPS, Channel

    with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            for step in PRIORITY_STEPS:
                key = f"{queue}{Channel.sep}{step}" if step else queue
                pipe.llen(key)
                pipe.lindex(key, -1)
        pipe.zrange(Channel.unacked_index_key, 0, -1, withscores=True)
        pipe.execute()


def run_read_cost(args: argparse.Namespace) -> int:
    """Client cost of one read of ``--count`` queues, and how long Redis runs the read script."""
    import statistics

    import redis
    from celery import Celery
    from redis.utils import HIREDIS_AVAILABLE

    from stalk_workers.queue_reader import PRIORITY_LISTS, QueueReader

    rng = random.Random(args.seed)
    with harness("stalk-bench-readcost-", keep=args.keep) as h:
        url = h.start_redis()
        app = Celery("producer", broker=url, set_as_current=False)
        with app.connection_for_write() as conn:
            for i in range(args.with_tasks):
                for _ in range(rng.randint(1, 50)):
                    app.send_task("bench.noop", queue=f"q-{i:04d}", connection=conn,
                                  priority=6 if rng.random() < 0.2 else None)
        app.close()
        queues = [f"q-{i:04d}" for i in range(args.count)]
        client = redis.Redis.from_url(url)
        reader = QueueReader(client)
        # Tasks delivered and not acked, as a worker with acks_late leaves them: the script reads the
        # index every time and fetches only the new entries.
        from kombu import Connection
        with Connection(url) as consumer:
            for i in range(args.scaling):
                consumer.default_channel.basic_get(queue=f"q-{i:04d}", no_ack=False)

            rows = []
            for name, read in (("before: one pipeline, LLEN + LINDEX per list + ZRANGE (8,001 commands)",
                                lambda: pipelined_read(client, queues)),
                               ("QueueReader.read: one Lua script (EVALSHA)", lambda: reader.read(queues))):
                read()  # warm: connection, script cache, the reader's caches
                cpu, wall = [], []
                script_before = script_stats(client.info("commandstats"))
                for _ in range(args.reads):
                    c, w = time.process_time(), time.perf_counter()
                    read()
                    cpu.append(time.process_time() - c)
                    wall.append(time.perf_counter() - w)
                rows.append((name, statistics.median(cpu), min(cpu), max(cpu), statistics.median(wall), min(wall),
                             max(wall)))
            script = script_stats(client.info("commandstats"))
            # Redis runs nothing else while a script runs: its own time per EVALSHA, from INFO commandstats.
            calls = script.get("calls", 0) - script_before.get("calls", 0)
            busy_us = (script.get("usec", 0) - script_before.get("usec", 0)) / calls if calls else math.nan
            in_flight = sum(s.in_flight for s in reader.read(queues).values())
            consumer.default_channel.close()
        client.close()
    print(f"client cost of reading {args.count:,} queues ({len(PRIORITY_LISTS)} lists each, {args.with_tasks} with "
          f"tasks, {in_flight} in flight), {args.reads} reads each; hiredis "
          f"{'installed' if HIREDIS_AVAILABLE else 'not installed'}; load average {load_average()}")
    print("| read | CPU median (min-max) | wall median (min-max) |")
    print("|---|---:|---:|")
    for name, c50, c0, c1, w50, w0, w1 in rows:
        print(f"| {name} | {c50 * 1000:.1f} ms ({c0 * 1000:.1f}-{c1 * 1000:.1f}) | "
              f"{w50 * 1000:.1f} ms ({w0 * 1000:.1f}-{w1 * 1000:.1f}) |")
    print(f"Redis busy running the script: {busy_us / 1000:.2f} ms per read (INFO commandstats, {calls} EVALSHA)")
    return 0


def report(result: dict[str, Any], args: argparse.Namespace) -> str:
    def ms(x: float) -> str:
        return f"{x * 1000:.0f} ms" if not math.isnan(x) else "n/a"

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    rt = result.get("strace_idle", {})
    rt2 = result.get("strace_delivering", {})
    rss_mb = (result["rss_kb"] or 0) / 1024
    hwm_mb = (result["hwm_kb"] or 0) / 1024
    rows = [
        "| measure | value | target | result |",
        "|---|---:|---|---|",
        f"| TaskQueues (one Redis, one operator) | {args.count:,} | | |",
        f"| ticks in the {result['window_seconds']:.0f} s window | {result['ticks']:.0f} | 1 per s (pollSeconds 1) | |",
        f"| tick duration p50 (histogram) | {ms(result['tick_p50'])} | | |",
        f"| tick duration p90 (histogram) | {ms(result['tick_p90'])} | <= 100 ms | {verdict(result['tick_p90'] <= TARGET_TICK_SECONDS)} |",
        f"| tick duration p99 (histogram) | {ms(result['tick_p99'])} | <= 100 ms | {verdict(result['tick_p99'] <= TARGET_TICK_SECONDS)} |",
        f"| scale patches in the window (up / down; a down first asks the workers what runs, up to 0.5 s) | "
        f"{result['scale_events_in_window']['up']:.0f} / {result['scale_events_in_window']['down']:.0f} | | |",
        f"| tick up to its API calls p50 / p99 (read and decide, `{PLAN}`) | {ms(result['plan_p50'])} / "
        f"{ms(result['plan_p99'])} | <= 100 ms | {verdict(result['plan_p99'] <= TARGET_TICK_SECONDS)} |",
        f"| tick duration mean (_sum/_count) | {ms(result['tick_mean'])} | | |",
        f"| ticks within 100 ms | {result['share_within_target']:.0%} | | |",
    ]
    if rt:
        rows.append(f"| Redis round trips per tick, no new deliveries (strace) | {rt['per_tick']:.2f} "
                    f"({rt['round_trips']} in {rt['ticks']:.0f} ticks) | 1 | {verdict(rt['per_tick'] <= 1.0 + 1e-9)} |")
    if rt2:
        rows.append(f"| Redis round trips per tick, consumer taking {args.deliver:g} tasks/s (strace) | "
                    f"{rt2['per_tick']:.2f} ({rt2['round_trips']} in {rt2['ticks']:.0f} ticks) | | |")
        rows.append(f"| of which the tick's read (EVALSHA_RO), per tick | {rt2['reads_per_tick']:.2f} "
                    f"({rt2['read_round_trips']} in {rt2['ticks']:.0f} ticks) | 1 | "
                    f"{verdict(rt2['reads_per_tick'] <= 1.0 + 1e-9)} |")
        others = rt2["others_by_command"]
        rows.append(f"| the others, by first command (remote control: busy workers before a scale down, "
                    f"the once-a-minute unconsumed-lists check) | {', '.join(f'{c} {n}' for c, n in others.items()) or 'none'} | | |")
    rows += [
        f"| Redis commands per read (LLEN/LINDEX/ZRANGE/HMGET, INFO commandstats) | {result['reader_commands_per_tick']:,.0f} | | |",
        f"| Redis busy per read (the read script, INFO commandstats) | {result['script_ms_per_read']:.2f} ms | | |",
        f"| operator CPU | {result['cpu_share']:.0%} of one core | | |",
        f"| operator memory VmRSS / VmHWM | {rss_mb:.0f} / {hwm_mb:.0f} MB | <= 300 MB | {verdict(hwm_mb <= TARGET_RSS_MB)} |",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="TaskQueues, each with its own Deployment")
    parser.add_argument("--with-tasks", type=int, default=None, help="queues with a backlog (default count / 10)")
    parser.add_argument("--scaling", type=int, default=10, help="TaskQueues allowed to scale (the rest stay at 0)")
    parser.add_argument("--rate", type=float, default=20.0, help="tasks/s added to backlog queues while measuring")
    parser.add_argument("--deliver", type=float, default=2.0, help="tasks/s taken (held unacked 10 s) while measuring")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds after every TaskQueue was ticked")
    parser.add_argument("--seconds", type=float, default=60.0, help="the measured window")
    parser.add_argument("--strace-seconds", type=float, default=10.0, help="each round-trip window (0: skip)")
    parser.add_argument("--read-cost", action="store_true",
                        help="only Redis: time QueueReader.read of --count queues against the pipelined read it replaced")
    parser.add_argument("--reads", type=int, default=20, help="reads per variant with --read-cost")
    parser.add_argument("--operator-env", action="append", default=[], metavar="STALK_X=VALUE",
                        help="a non-default operator setting, for diagnosis (say so when reporting)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs of every process)")
    args = parser.parse_args(argv)
    if any("=" not in kv or not kv.startswith("STALK_") for kv in args.operator_env):
        parser.error("--operator-env takes STALK_NAME=VALUE")
    if args.with_tasks is None:
        args.with_tasks = max(1, args.count // 10)
    if not 1 <= args.count <= 5000 or not 0 <= args.scaling <= min(args.with_tasks, 50) or args.with_tasks > args.count:
        parser.error("need 1 <= --count <= 5000, --with-tasks <= --count, --scaling <= min(--with-tasks, 50)")
    if not 1 <= args.seconds <= 3600 or not 0 <= args.warmup <= 600 or not 0 <= args.strace_seconds <= 120:
        parser.error("--seconds 1..3600, --warmup 0..600, --strace-seconds 0..120")

    if args.read_cost:
        return run_read_cost(args)
    result = run_scale(args)
    print()
    print(f"Measured {result['started_at']:%Y-%m-%d %H:%M} UTC"
          + (f", operator settings changed: {' '.join(args.operator_env)}" if args.operator_env else ", operator defaults"))
    print(report(result, args))
    print(f"tick histogram in the window (cumulative, le -> ticks): {result['buckets']}")
    print(f"reader calls in the window: {result['reader_calls']}; all Redis commands: {result['all_commands']:,} "
          f"(producer: {result['produced']} tasks, consumer: {result['delivered']} taken)")
    for key in ("strace_idle", "strace_delivering"):
        if key in result:
            print(f"{key}: {result[key]}")
    print(f"API server writes in the window (apiserver_request_total): {result['api_writes']}")
    print(f"scale events (total) {result['scale_events']}; broker errors {result['broker_errors']}, "
          f"API errors {result['api_errors']}")
    print(f"set-up: cluster {result['cluster_seconds']:.1f}s, apply {result['apply_seconds']:.1f}s, "
          f"Deployments settled {result['settle_seconds']:.0f}s later, "
          f"every TaskQueue measured {result['first_full_tick_seconds']:.1f}s and the first tick done "
          f"{result['first_tick_done_seconds']:.1f}s after the operator started "
          f"(warm-up ticks {result['warmup_ticks'][0]:.0f}, {result['warmup_ticks'][1]:.1f}s in ticks); "
          f"memory at the end {result['rss_end_kb']}")
    print(f"load average at start {result['load_start']}, at end {result['load_end']} ({os.cpu_count()} CPUs)")
    if result["operator_warnings"]:
        print(f"operator warnings/errors ({len(result['operator_warnings'])}):")
        for line in result["operator_warnings"][:10]:
            print("  " + line)
    if args.json:
        args.json.write_text(json.dumps(result, default=str, indent=1))
    return 0


if __name__ == "__main__":
    run(main)
