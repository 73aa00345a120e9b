#!/usr/bin/env python3
"""Publish-flood benchmark: how wspush survives a flood against a Redis with default limits.

A relay that reads Redis slower than Redis accepts PUBLISHes builds a backlog in its
subscriber connection's output buffer.  With Redis's default
`client-output-buffer-limit pubsub 32mb 8mb 60`, Redis then cuts the subscription.
This benchmark floods wspush at full speed, then checks what is left: did the
subscription survive (or come back), how much memory wspush kept, what it dropped, and
how fast messages to *other* clients are relayed right after the flood.

One repetition, all on loopback (CPU 0: wspush; CPU 1: everything else, this script
included):

1. a fresh redis-server on a free port, default pub/sub limits stated explicitly;
2. wspush (``--cmd``) with ``-expvar``, waited for until ``GET /ready`` is 200;
3. loadgen A, "flooded": 1,000 WebSockets over tokens t0..t99; loadgen B, "probe":
   100 WebSockets over tokens p0..p99;
4. with ``--control``: the probe phase (below) once before the flood, as the baseline;
5. the flood: ``publisher -r 0`` for ``--duration`` s to the flooded tokens;
6. ``--after`` s later, the probe: 2,000 msg/s for ``--probe-duration`` s to the probe
   tokens; once wspush has delivered everything (its ``successful_deliveries`` stops
   moving), loadgen B's interval snapshot (SIGUSR2) is the probe's latency;
7. both loadgens are drained (SIGUSR1) and report.

Every 0.25 s it samples wspush's RSS (whole process tree), wspush's counters from
``/debug/vars``, and Redis's ``CLIENT LIST TYPE pubsub`` (the subscriber's ``omem``) and
``INFO stats``.  The C tools come from the shared harness's work dir
(``$WSPUSH_BENCH_DIR`` or ``~/.cache/wspush-bench``; build them with
``python3 ../shared/bench/run.py build``).

Usage::

    .venv/bin/python bench/flood.py --control              # one repetition, text report
    .venv/bin/python bench/flood.py --reps 3 --control     # medians of 3
    .venv/bin/python bench/flood.py --control --json       # one JSON object
    .venv/bin/python bench/flood.py --cmd "/path/to/wspush" --duration 20 --keep
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import redis

REPO = Path(__file__).resolve().parent.parent
WORK = Path(os.environ.get("WSPUSH_BENCH_DIR") or Path.home() / ".cache" / "wspush-bench").resolve()
LOADGEN = WORK / "loadgen"
PUBLISHER = WORK / "publisher"
SERVER_CPU, HARNESS_CPU = "0", "1"
PREFIX = "bench."
PUBSUB_LIMIT = "pubsub 32mb 8mb 60"  # Redis's default, stated so a changed default shows
PUBSUB_HARD_MB = 32
SAMPLE_PERIOD = 0.25
FLOOD_CONNS, FLOOD_TOKENS = 1000, 100
PROBE_CONNS, PROBE_TOKENS, PROBE_RATE = 100, 100, 2000
PAYLOAD = 64
# Redis 7.0 has no INFO counter for these cuts, but logs each one like this (the
# "# " marks a warning): "<pid>:M 29 Nov 2026 00:32:01.395 # Client id=4 ... scheduled
# to be closed ASAP for overcoming of output buffer limits."
OBL_LOG = re.compile(
    r"^\d+:\w (\d+ \w+ \d+ [\d:.]+) # Client .* omem=(\d+) .*overcoming of output buffer limits",
    re.M,
)

Json = dict[str, Any]
T = TypeVar("T")


@dataclass(frozen=True)
class Config:
    cmd: list[str]
    duration: float
    after: float
    probe_duration: float
    control: bool
    drain_max: float
    keep: bool


# ------------------------------------------------------------------ processes


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot): tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def descendants(root: int) -> dict[int, int | None]:
    """`root` and every process below it (by parent pid), with their start times."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [root], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return {pid: start_time(pid) for pid in found}


def rss_kb(root: int) -> int:
    """VmRSS summed over `root`'s process tree."""
    total = 0
    for pid in descendants(root):
        with suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


class Processes:
    """Every child started for a run, stopped by pid (TERM, then KILL) however the run ends."""

    def __init__(self, rundir: Path) -> None:
        self.rundir = rundir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], cpu: str) -> subprocess.Popen[bytes]:
        """Start `argv` on `cpu`; stdout goes to <rundir>/<name>.out, stderr to .err."""
        with (
            open(self.rundir / f"{name}.out", "wb") as out,
            open(self.rundir / f"{name}.err", "wb") as err,
        ):
            proc = subprocess.Popen(
                ["taskset", "-c", cpu, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # Ctrl-C reaches this script only; we stop them
            )
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            stop(proc)
        self.started = []


def stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM `proc` and its descendants; SIGKILL whatever is left after `grace` s."""
    if proc.poll() is not None:
        return
    tree = descendants(proc.pid)
    signal_tree(tree, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    signal_tree(tree, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def signal_tree(tree: dict[int, int | None], signum: int) -> None:
    """Signal each process of `tree` that is still the same process (same start time)."""
    for pid, started in tree.items():
        if started is not None and start_time(pid) == started:
            with suppress(ProcessLookupError):
                os.kill(pid, signum)


def wait_until(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll `check` until it returns something truthy; TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


def free_port(taken: set[int]) -> int:
    for _ in range(200):
        port = random.randint(20000, 32000)
        if port in taken:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise RuntimeError("no free port")


def last_json(path: Path, first_key: str) -> Json | None:
    """The last JSON line of a tool's output whose first key is `first_key`."""
    found = None
    with suppress(OSError):
        for line in path.read_text().splitlines():
            if line.startswith(f'{{"{first_key}"'):
                with suppress(ValueError):
                    found = json.loads(line)
    return found


# ------------------------------------------------------------------- sampling


class Sampler(threading.Thread):
    """Calls `read` every SAMPLE_PERIOD s and keeps each result; a failed read is skipped."""

    def __init__(self, read: Callable[[], Json]) -> None:
        super().__init__(daemon=True)
        self.read = read
        self.samples: list[Json] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            with suppress(Exception):
                self.samples.append(self.read())
            self.stopped.wait(SAMPLE_PERIOD)

    def finish(self) -> None:
        self.stopped.set()
        self.join(timeout=5)

    def peak(self, key: str) -> float | None:
        values = [s[key] for s in self.samples if s.get(key) is not None]
        return max(values) if values else None


def wspush_vars(eport: int) -> Json:
    response = httpx.get(f"http://127.0.0.1:{eport}/debug/vars", timeout=2.0)
    response.raise_for_status()
    return {k: v for k, v in response.json()["wspush"].items() if isinstance(v, int)}


def redis_figures(client: redis.Redis) -> Json:
    """The pub/sub subscriber's output buffer, and Redis's own cut counter if it has one."""
    subscribers = client.client_list(_type="pubsub")
    stats = client.info("stats")
    return {
        "omem": max((int(c["omem"]) for c in subscribers), default=0),
        "subscribers": len(subscribers),
        "obl_disconnections": stats.get("client_output_buffer_limit_disconnections"),
    }


@dataclass(frozen=True)
class Cut:
    """Redis closing the subscriber for its output buffer: when, and the buffer then."""

    after_s: float  # seconds after the flood started
    omem: int


def buffer_limit_cuts(log: Path, since: float) -> list[Cut]:
    """The cuts Redis logged for the buffer limit; `since` is the flood's time.time()."""
    cuts = []
    for stamp, omem in OBL_LOG.findall(log.read_text(errors="replace")):
        seconds, _, millis = stamp.partition(".")
        wall = time.mktime(time.strptime(seconds, "%d %b %Y %H:%M:%S")) + float(f"0.{millis}")
        cuts.append(Cut(wall - since, int(omem)))
    return cuts


def counter_deltas(before: Json, after: Json) -> Json:
    """after - before for every counter wspush reports (missing = 0)."""
    return {k: after[k] - before.get(k, 0) for k in after if isinstance(after[k], int)}


# ------------------------------------------------------------------ the phases


@dataclass
class Run:
    """One repetition's processes, ports and samplers."""

    cfg: Config
    rundir: Path
    procs: Processes
    rport: int = 0
    port: int = 0
    eport: int = 0
    wspush: subprocess.Popen[bytes] | None = None
    redis_client: redis.Redis | None = None
    samplers: dict[str, Sampler] = field(default_factory=dict)

    def subscriber(self) -> Json:
        """Redis's view of the subscriber now: its output buffer and whether it exists."""
        assert self.redis_client is not None
        return redis_figures(self.redis_client)

    def vars(self) -> Json:
        """wspush's counters now (retried: a flooded wspush answers slowly)."""
        return retry(lambda: wspush_vars(self.eport), 15.0, "wspush /debug/vars")


def retry(read: Callable[[], T], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return read()
        except Exception as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: {exc}") from exc
            time.sleep(0.2)


def start_redis(run: Run) -> None:
    run.procs.start(
        "redis",
        [
            "redis-server",
            "--port", str(run.rport),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--maxclients", "10000",
            "--client-output-buffer-limit", PUBSUB_LIMIT,
            "--logfile", str(run.rundir / "redis.log"),
        ],
        HARNESS_CPU,
    )  # fmt: skip
    run.redis_client = redis.Redis(port=run.rport, socket_timeout=2.0, decode_responses=True)
    client = run.redis_client
    retry(client.ping, 10.0, "redis-server PING")


def start_wspush(run: Run) -> None:
    argv = [
        *run.cfg.cmd,
        "-addr", f"127.0.0.1:{run.port}",
        "-redis", f"127.0.0.1:{run.rport}",
        "-prefix", PREFIX,
        "-expvar", f"127.0.0.1:{run.eport}",
    ]  # fmt: skip
    run.wspush = run.procs.start("wspush", argv, SERVER_CPU)

    def ready() -> bool:
        if run.wspush is None or run.wspush.poll() is not None:
            raise RuntimeError("wspush exited:\n" + tail(run.rundir / "wspush.err"))
        with suppress(httpx.HTTPError):
            return httpx.get(f"http://127.0.0.1:{run.port}/ready", timeout=1.0).status_code == 200
        return False

    wait_until(ready, 30.0, "wspush /ready")


def start_loadgen(run: Run, name: str, conns: int, token_fmt: str) -> subprocess.Popen[bytes]:
    ready = run.rundir / f"{name}.ready"
    argv = [
        str(LOADGEN), "-p", str(run.port), "-m", "ws",
        "-n", str(conns), "-t", str(FLOOD_TOKENS if name == "flooded" else PROBE_TOKENS),
        "--token-fmt", token_fmt, "-r", "5000", "--inflight", "256",
        "--ready-file", str(ready), "--drain-idle-ms", "1000", "--drain-max", "10",
        "--max-time", "3600",
    ]  # fmt: skip
    proc = run.procs.start(name, argv, HARNESS_CPU)

    def is_ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"loadgen {name} exited:\n" + tail(run.rundir / f"{name}.err"))
        return ready.exists()

    wait_until(is_ready, 60.0, f"loadgen {name} ready")
    return proc


def publish(run: Run, name: str, token_fmt: str, rate: int, seconds: float) -> Json:
    """Run the C publisher to completion and return its JSON line."""
    argv = [
        str(PUBLISHER), "-M", "redis", "-p", str(run.rport), "-P", PREFIX,
        "--token-fmt", token_fmt, "-t", str(FLOOD_TOKENS if name == "flood" else PROBE_TOKENS),
        "-r", str(rate), "-d", f"{seconds:g}", "-s", str(PAYLOAD), "-w", "1000",
    ]  # fmt: skip
    proc = run.procs.start(name, argv, HARNESS_CPU)
    try:
        proc.wait(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        stop(proc)
    result = last_json(run.rundir / f"{name}.out", "tool")
    if result is None:
        raise RuntimeError(
            f"publisher {name} printed nothing:\n" + tail(run.rundir / f"{name}.err")
        )
    return result


def wait_delivered(run: Run) -> float:
    """Seconds until wspush's successful_deliveries stops moving (1 s unchanged)."""
    start = time.monotonic()
    deadline = start + run.cfg.drain_max
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        with suppress(Exception):
            now = wspush_vars(run.eport).get("successful_deliveries", 0)
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= 1.0:
                break
        time.sleep(0.2)
    time.sleep(0.5)  # the last writes reach the loadgen
    return time.monotonic() - start


def snapshot(run: Run, probe: subprocess.Popen[bytes]) -> Json:
    """Loadgen B's counts and latency since its previous snapshot (SIGUSR2)."""
    out = run.rundir / "probe.out"
    count = sum(1 for line in out.read_text().splitlines() if line.startswith('{"snapshot"'))
    probe.send_signal(signal.SIGUSR2)

    def taken() -> Json | None:
        snap = last_json(out, "snapshot")
        return snap if snap is not None and snap["snapshot"] > count else None

    return wait_until(taken, 10.0, "probe loadgen snapshot")


def probe_phase(run: Run, probe: subprocess.Popen[bytes]) -> Json:
    """Fixed-rate messages to the probe tokens; the probe clients' latency and loss."""
    pub = publish(run, "probe-pub", "p%d", PROBE_RATE, run.cfg.probe_duration)
    drained = wait_delivered(run)
    snap = snapshot(run, probe)
    expected = pub["acked"] * (PROBE_CONNS // PROBE_TOKENS)
    return {
        "published": pub["acked"],
        "reached_subscriber": pub["receivers_sum"],
        "received": snap["msgs_delta"],
        "ratio": snap["msgs_delta"] / expected if expected else None,
        "p50_ms": snap["lat_p50_ms"],
        "p99_ms": snap["lat_p99_ms"],
        "max_ms": snap["lat_max_ms"],
        "disconnects": snap["disconnects_delta"],
        "drain_s": drained,
    }


def drain(proc: subprocess.Popen[bytes], out: Path) -> Json:
    """SIGUSR1 a loadgen (it exits once idle for 1 s, 10 s at most); its final JSON line."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGUSR1)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stop(proc)
    return last_json(out, "tool") or {}


def tail(path: Path, lines: int = 15) -> str:
    with suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def start_samplers(run: Run) -> None:
    assert run.wspush is not None
    assert run.redis_client is not None
    pid, client = run.wspush.pid, run.redis_client
    # Separate threads: a saturated wspush or Redis answers late, and must not
    # stall the other readings.
    run.samplers = {
        "rss": Sampler(lambda: {"t": time.monotonic(), "rss_kb": rss_kb(pid)}),
        "vars": Sampler(lambda: {"t": time.monotonic(), **wspush_vars(run.eport)}),
        "redis": Sampler(lambda: {"t": time.monotonic(), **redis_figures(client)}),
    }
    for sampler in run.samplers.values():
        sampler.start()


def redis_obl_stat(run: Run) -> int | None:
    assert run.redis_client is not None
    value = run.redis_client.info("stats").get("client_output_buffer_limit_disconnections")
    return int(value) if value is not None else None


def one_rep(cfg: Config) -> Json:
    """One repetition: setup, optional control probe, flood, probe; the figures."""
    WORK.joinpath("runs").mkdir(parents=True, exist_ok=True)
    rundir = Path(tempfile.mkdtemp(prefix="flood-", dir=WORK / "runs"))
    run = Run(cfg, rundir, Processes(rundir))
    ports: set[int] = set()
    run.rport, run.port, run.eport = free_port(ports), free_port(ports), free_port(ports)
    ok = False
    try:
        figures = measure(run)
        ok = True
        return figures
    finally:
        for sampler in run.samplers.values():
            sampler.finish()
        run.procs.stop_all()
        if run.redis_client is not None:
            run.redis_client.close()
        if ok and not cfg.keep:
            shutil.rmtree(rundir, ignore_errors=True)
        else:
            print(f"run directory kept: {rundir}", file=sys.stderr)


def measure(run: Run) -> Json:
    start_redis(run)
    start_wspush(run)
    assert run.wspush is not None
    rss_idle = rss_kb(run.wspush.pid)
    start_samplers(run)
    flooded = start_loadgen(run, "flooded", FLOOD_CONNS, "t%d")
    probe = start_loadgen(run, "probe", PROBE_CONNS, "p%d")
    time.sleep(1.0)
    control = probe_phase(run, probe) if run.cfg.control else None

    before, obl_before = run.vars(), redis_obl_stat(run)
    rss_before = rss_kb(run.wspush.pid)
    t_flood, wall_flood = time.monotonic(), time.time()
    flood = publish(run, "flood", "t%d", 0, run.cfg.duration)
    left = retry(run.subscriber, 10.0, "redis CLIENT LIST")
    time.sleep(run.cfg.after)
    after = probe_phase(run, probe)
    t_end = time.monotonic()
    end, obl_end = run.vars(), redis_obl_stat(run)
    rss_end = rss_kb(run.wspush.pid)
    flooded_final = drain(flooded, run.rundir / "flooded.out")
    drain(probe, run.rundir / "probe.out")

    delta = counter_deltas(before, end)
    expected = flood["acked"] * (FLOOD_CONNS // FLOOD_TOKENS)
    received = flooded_final.get("msgs", 0)
    cuts = buffer_limit_cuts(run.rundir / "redis.log", wall_flood)
    omem = [
        s["omem"] for s in run.samplers["redis"].samples if s["t"] >= t_flood and s["t"] <= t_end
    ]
    peak_rss = run.samplers["rss"].peak("rss_kb") or 0
    return {
        "flood_published": flood["acked"],
        "flood_publish_per_s": flood["pub_per_s"],
        "flood_reached_subscriber": flood["receivers_sum"],
        "wspush_messages_seen": max(delta.get("messages_seen", 0) - after["published"], 0),
        "flooded_expected": expected,
        "flooded_received": received,
        "flooded_ratio": received / expected if expected else None,
        "flooded_disconnects": flooded_final.get("disconnects"),
        "wspush_deliveries": delta.get("successful_deliveries"),
        "wspush_redis_disconnects": delta.get("redis_disconnects"),
        "wspush_redis_connects": delta.get("redis_connects"),
        "redis_obl_cuts_log": len(cuts),
        "first_cut_s": min((c.after_s for c in cuts), default=None),
        "redis_obl_cuts_stat": None if obl_end is None else obl_end - (obl_before or 0),
        "peak_omem_mb": max(omem, default=0) / 2**20,
        "omem_at_cut_mb": max((c.omem for c in cuts), default=0) / 2**20,
        "omem_flood_end_mb": left["omem"] / 2**20,
        "subscribed_at_flood_end": left["subscribers"],
        "rss_idle_mb": rss_idle / 1024,
        "rss_before_flood_mb": rss_before / 1024,
        "rss_peak_mb": peak_rss / 1024,
        "rss_final_mb": rss_end / 1024,
        "slow_clients_disconnected": delta.get("slow_clients_disconnected", 0),
        **{k: v for k, v in delta.items() if k.startswith("dropped")},
        "wspush_alive": run.wspush.poll() is None,
        **{f"after_{k}": v for k, v in after.items()},
        **({f"control_{k}": v for k, v in control.items()} if control else {}),
    }


# -------------------------------------------------------------------- report


def medians(reps: list[Json]) -> Json:
    """The median of each figure over the repetitions that have it."""
    keys = dict.fromkeys(k for rep in reps for k in rep)
    out: Json = {}
    for key in keys:
        values = [rep[key] for rep in reps if isinstance(rep.get(key), int | float)]
        out[key] = statistics.median(values) if values else None
    return out


def conditions(cfg: Config) -> Json:
    return {
        "wspush_cmd": shlex.join(cfg.cmd),
        "git_commit": git(["rev-parse", "--short", "HEAD"]),
        "git_dirty": bool(git(["status", "--porcelain", "--", "wspush"])),
        "redis_version": redis_version(),
        "redis_limit": PUBSUB_LIMIT,
        "cpus": f"wspush on CPU {SERVER_CPU}; redis, loadgens, publishers, this script on "
        f"CPU {HARNESS_CPU} (of {os.cpu_count()})",
        "flooded": f"{FLOOD_CONNS} WS over {FLOOD_TOKENS} tokens t%d",
        "probe": f"{PROBE_CONNS} WS over {PROBE_TOKENS} tokens p%d",
        "flood": f"publisher -r 0 for {cfg.duration:g} s, {PAYLOAD} B",
        "probe_load": f"{PROBE_RATE} msg/s for {cfg.probe_duration:g} s, {cfg.after:g} s "
        "after the flood",
        "control": cfg.control,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def git(args: list[str]) -> str:
    result = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10
    )
    return result.stdout.strip()


def redis_version() -> str:
    result = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, timeout=10
    )
    match = re.search(r"v=(\S+)", result.stdout)
    return match.group(1) if match else result.stdout.strip()


def num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:,.{digits}f}"


def report_lines(cond: Json, fig: Json, reps: int) -> Iterator[str]:
    label = f"median of {reps}" if reps > 1 else "1 repetition"
    yield "conditions"
    for key, value in cond.items():
        yield f"  {key:<12} {value}"
    yield f"results ({label})"
    yield (
        f"  flood        {num(fig['flood_published'])} PUBLISHed = "
        f"{num(fig['flood_publish_per_s'])}/s; {num(fig['flood_reached_subscriber'])} "
        f"({num(ratio(fig['flood_reached_subscriber'], fig['flood_published']), 3)}) "
        "reached a subscriber"
    )
    yield (
        f"  wspush read  {num(fig['wspush_messages_seen'])} messages from Redis "
        f"({num(ratio(fig['wspush_messages_seen'], fig['flood_published']), 4)} of published)"
    )
    yield (
        f"  flooded      {num(fig['flooded_received'])} of {num(fig['flooded_expected'])} "
        f"delivered, ratio {num(fig['flooded_ratio'], 4)}; "
        f"{num(fig['flooded_disconnects'])} client disconnects"
    )
    yield (
        f"  subscription cut by Redis: {num(fig['redis_obl_cuts_log'])} (redis log), "
        f"INFO stat {num(fig['redis_obl_cuts_stat'])}; wspush redis_disconnects "
        f"+{num(fig['wspush_redis_disconnects'])}, redis_connects "
        f"+{num(fig['wspush_redis_connects'])}; first cut {num(fig['first_cut_s'], 2)} s "
        "into the flood"
    )
    yield (
        f"  omem         peak sampled {num(fig['peak_omem_mb'], 1)} MB, at a cut "
        f"{num(fig['omem_at_cut_mb'], 1)} MB (hard limit {PUBSUB_HARD_MB} MB); left in Redis "
        f"when the flood stopped {num(fig['omem_flood_end_mb'], 1)} MB (subscribers then: "
        f"{num(fig['subscribed_at_flood_end'])})"
    )
    yield (
        f"  wspush RSS   idle {num(fig['rss_idle_mb'], 1)} MB, before flood "
        f"{num(fig['rss_before_flood_mb'], 1)} MB, peak {num(fig['rss_peak_mb'], 1)} MB, "
        f"final {num(fig['rss_final_mb'], 1)} MB; alive at end: {num(fig['wspush_alive'])}"
    )
    drops = ", ".join(f"{k} {num(v)}" for k, v in fig.items() if k.startswith("dropped"))
    yield (
        f"  drops        {drops or '-'}; slow clients disconnected "
        f"{num(fig['slow_clients_disconnected'])}"
    )
    yield "  probe              received/published   ratio   p50 ms   p99 ms   max ms  drain s"
    for phase in ("control", "after"):
        if fig.get(f"{phase}_published") is None:
            continue
        name = "control (no flood)" if phase == "control" else "after the flood"
        yield (
            f"  {name:<18} {num(fig[f'{phase}_received']):>8} / "
            f"{num(fig[f'{phase}_published']):<8} {num(fig[f'{phase}_ratio'], 4):>7} "
            f"{num(fig[f'{phase}_p50_ms'], 2):>8} {num(fig[f'{phase}_p99_ms'], 2):>8} "
            f"{num(fig[f'{phase}_max_ms'], 2):>8} {num(fig[f'{phase}_drain_s'], 1):>8}"
        )


def rep_lines(reps: list[Json]) -> Iterator[str]:
    """The figures that vary most between repetitions, one line per repetition."""
    if len(reps) < 2:
        return
    yield "per repetition"
    for i, fig in enumerate(reps, 1):
        yield (
            f"  {i}: cuts {num(fig['redis_obl_cuts_log'])}, omem peak "
            f"{num(fig['peak_omem_mb'], 1)} MB, at flood end {num(fig['omem_flood_end_mb'], 1)}"
            f" MB ({num(fig['subscribed_at_flood_end'])} subscribed), reached subscriber "
            f"{num(ratio(fig['flood_reached_subscriber'], fig['flood_published']), 3)}, "
            f"flooded ratio {num(fig['flooded_ratio'], 4)}, RSS peak {num(fig['rss_peak_mb'], 1)}"
            f" MB, after-flood probe p50/p99/max {num(fig['after_p50_ms'], 2)}/"
            f"{num(fig['after_p99_ms'], 2)}/{num(fig['after_max_ms'], 2)} ms"
            + (
                f" (control {num(fig['control_p50_ms'], 2)}/{num(fig['control_p99_ms'], 2)}/"
                f"{num(fig['control_max_ms'], 2)})"
                if "control_p50_ms" in fig
                else ""
            )
        )


def ratio(part: Any, whole: Any) -> float | None:
    return part / whole if part is not None and whole else None


# ---------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> tuple[Config, int, bool]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_cmd = f"{REPO / '.venv' / 'bin' / 'python'} -m wspush"
    parser.add_argument("--cmd", default=default_cmd, help=f"wspush command ({default_cmd})")
    parser.add_argument("--duration", type=float, default=10.0, help="flood seconds (10)")
    parser.add_argument("--after", type=float, default=2.0, help="pause before the probe (2)")
    parser.add_argument("--probe-duration", type=float, default=5.0, help="probe seconds (5)")
    parser.add_argument("--control", action="store_true", help="also probe before the flood")
    parser.add_argument(
        "--drain-max", type=float, default=30.0, help="most seconds to wait for deliveries (30)"
    )
    parser.add_argument("--reps", type=int, default=1, help="repetitions; medians are shown")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs)")
    args = parser.parse_args(argv)
    cfg = Config(
        cmd=shlex.split(args.cmd),
        duration=args.duration,
        after=args.after,
        probe_duration=args.probe_duration,
        control=args.control,
        drain_max=args.drain_max,
        keep=args.keep,
    )
    return cfg, max(args.reps, 1), args.json


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the finally blocks stop every child.

    SIGINT gets Python's handler back too: a shell starts background jobs with it ignored.
    """

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def prepare() -> None:
    for tool in (LOADGEN, PUBLISHER):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"{tool} missing: run python3 ../shared/bench/run.py build")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the children
    with suppress(OSError):
        os.sched_setaffinity(0, {int(HARNESS_CPU)})


def main(argv: list[str] | None = None) -> int:
    cfg, reps, as_json = parse_args(argv)
    prepare()
    cond = conditions(cfg)
    results: list[Json] = []
    with sigterm_as_interrupt():
        try:
            for rep in range(1, reps + 1):
                results.append(one_rep(cfg))
                print(f"repetition {rep}/{reps} done", file=sys.stderr)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
    figures = medians(results)
    if as_json:
        print(json.dumps({"conditions": cond, "median": figures, "reps": results}))
    else:
        print("\n".join([*report_lines(cond, figures, reps), *rep_lines(results)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
