"""Shared benchmark helpers: processes, the load driver, statistics and result files.

Everything runs on loopback. A benchmark script (the *orchestrator*) starts a nats-server and
provider processes exactly the way a wasmCloud host does (one base64 HostData line on stdin,
stdin left open), and leaves the measuring to a **driver**: a separate Python process (this
file, ``python bench/common.py driver``) that receives a JSON spec on stdin, pre-builds every
request payload (signing invocations is the host's cost, not the provider's, so it happens
before any clock starts), runs the phases and prints one JSON result line. Keeping the driver
out of the orchestrator's interpreter means neither the system under test nor the baseline
shares an event loop or a GIL with the load generator.

The same file also provides the baseline processes: ``echo`` (a nats-py responder in the RPC
queue group that answers with the request bytes) and ``sink`` (a subscriber that counts
messages and reports when it has them all).

Driver protocol: line 1 on stdin is the spec; a phase of kind ``barrier`` prints
``{"event": "barrier", "name": ...}`` and waits for one more stdin line, so the orchestrator
can act (e.g. heal a fault proxy) between phases without the driver re-signing anything. The
last stdout line is ``{"event": "result", ...}``. All timestamps the driver reports are
``time.perf_counter()`` values, which on Linux is CLOCK_MONOTONIC: comparable across the
processes of one machine (checked at start-up, see :func:`check_clock`).

Besides signed invocations, the driver can run nats-py's own JetStream KV ``put``/``get``
(phase kind ``kv``) and a bare ordered-consumer read of a stream (``stream_read``), the
baselines of ``jetstream.py``. A closed phase given ``cpu_pids`` also reports the CPU time
(utime + stime from ``/proc/<pid>/stat``) those processes and the driver spent during it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from contract.client import KeyValueClient
from contract.keyvalue import CONTRACT_ID, SetRequest, resolve_operation
from contract.nkeys import KeyPair
from contract.wire import RPC_QUEUE_GROUP, HostData, InvocationResponse, LinkDefinition, Subjects
from wasmbus_testkit import NatsServer, ProviderProcess

ROOT = Path(__file__).resolve().parents[1]
#: The provider exactly as a host starts it (the installed package, no arguments).
PROVIDER_COMMAND = [sys.executable, "-m", "provider"]
RESULTS_DIR = ROOT / "bench" / "results"
LATTICE = "default"
LINK_NAME = "default"
#: Every request the driver sends has this timeout; a request that takes longer is an error.
REQUEST_TIMEOUT = 5.0


# ------------------------------------------------------------------------------ statistics
def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100) of already sorted values."""
    if not sorted_values:
        return float("nan")
    if len(sorted_values) == 1:
        return sorted_values[0]
    rank = (len(sorted_values) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def summarize_ms(samples_s: Iterable[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean in milliseconds of latencies given in seconds."""
    values = sorted(samples_s)
    if not values:
        return {"n": 0}
    ms = 1000.0
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50) * ms, 4),
        "p90_ms": round(percentile(values, 90) * ms, 4),
        "p99_ms": round(percentile(values, 99) * ms, 4),
        "max_ms": round(values[-1] * ms, 4),
        "mean_ms": round(sum(values) / len(values) * ms, 4),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def median(values: Sequence[float]) -> float:
    return percentile(sorted(values), 50)


# ------------------------------------------------------------------------------ output
def machine_info() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg": list(os.getloadavg()),
    }


def write_results(name: str, results: dict[str, Any], *, quick: bool, started: float) -> Path:
    """Write ``bench/results/<name>.json`` (``<name>-quick.json`` for smoke runs)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}{'-quick' if quick else ''}.json"
    document = {
        "name": name,
        "command": shlex.join([sys.executable, *sys.argv]),
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "wall_seconds": round(time.monotonic() - started, 2),
        "machine": machine_info(),
        "results": results,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) < 1:
            return f"{value:.{digits}g}"
        return f"{value:.{digits}f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers], *([fmt(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    print(f"\n{title}")
    for index, row in enumerate(cells):
        print(
            "  "
            + "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if index == 0:
            print("  " + "  ".join("-" * w for w in widths))


def check_clock() -> None:
    """Cross-process timestamps rely on perf_counter being the system-wide monotonic clock."""
    info = time.get_clock_info("perf_counter")
    if "CLOCK_MONOTONIC" not in info.implementation:
        raise SystemExit(f"perf_counter is {info.implementation}; need CLOCK_MONOTONIC (Linux)")


# ------------------------------------------------------------------------------ CPU time
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process (all its threads), from ``/proc/<pid>/stat``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid``, by scanning ``/proc/*/stat`` for their parent pid."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        if int(stat[stat.rindex(b")") + 2 :].split()[1]) == pid:
            children.append(int(entry))
    return sorted(children)


def wait_child(pid: int, timeout: float = 10.0) -> int:
    """The first child process of ``pid`` (e.g. the provider's verification worker)."""
    deadline = time.monotonic() + timeout
    while True:
        children = child_pids(pid)
        if children:
            return children[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} started no child within {timeout}s")
        time.sleep(0.05)


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent on anything but idle/iowait since boot (``/proc/stat``)."""
    with open("/proc/stat", "rb") as handle:
        fields = [int(x) for x in handle.readline().split()[1:9]]
    # user nice system idle iowait irq softirq steal (guest time is included in user)
    return (sum(fields) - fields[3] - fields[4]) / CLK_TCK


def _cpu_sample(pids: dict[str, int] | None) -> dict[str, float | None]:
    if not pids:
        return {}
    return {name: cpu_seconds(pid) for name, pid in {**pids, "driver": os.getpid()}.items()}


def _cpu_delta(before: dict[str, float | None], after: dict[str, float | None]) -> dict:
    return {
        name: None if start is None or after.get(name) is None else round(after[name] - start, 4)
        for name, start in before.items()
    }


# ------------------------------------------------------------------------------ processes
class Workspace:
    """A temp dir plus every child process started for one benchmark run; kills them all.

    The dir (process logs) is removed after a successful run and kept after a failure.
    """

    def __init__(self, name: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"kvbench-{name}-"))
        self._children: list[Any] = []

    def track(self, child: Any) -> Any:
        self._children.append(child)
        return child

    def close(self) -> None:
        for child in reversed(self._children):
            with contextlib.suppress(Exception):
                if isinstance(child, subprocess.Popen):
                    if child.poll() is None:
                        child.kill()
                    child.wait(5)
                else:  # ProviderProcess, NatsServer: kill(); FaultProxy: stop()
                    (getattr(child, "kill", None) or child.stop)()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close()
        if exc_type is None:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            print(f"logs kept in {self.dir}", file=sys.stderr)

    def start_nats(self, *, jetstream: bool = False) -> NatsServer:
        server = NatsServer(self.dir / "nats", jetstream=jetstream)
        self.track(server)
        return server.start()

    def spawn(
        self, args: Sequence[str], name: str, *, stdin: Any = subprocess.DEVNULL, stdout: Any = None
    ) -> subprocess.Popen:
        """A child python process (``args`` after the interpreter); stderr goes to a log file."""
        err = open(self.dir / f"{name}.stderr.log", "wb")  # noqa: SIM115 (child keeps it)
        proc = subprocess.Popen(
            [sys.executable, *args],
            stdin=stdin,
            stdout=stdout,
            stderr=err,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        err.close()
        return self.track(proc)

    def log_tail(self, name: str, max_bytes: int = 3000) -> str:
        path = self.dir / f"{name}.stderr.log"
        return path.read_text(errors="replace")[-max_bytes:] if path.exists() else ""


class Lattice:
    """A fake host's keys: one cluster issuer and one actor linked to every provider."""

    def __init__(self, nats_url: str, prefix: str = LATTICE, link_name: str = LINK_NAME) -> None:
        self.nats_url = nats_url
        self.prefix = prefix
        self.link_name = link_name
        self.cluster = KeyPair.generate("cluster")
        self.actor = KeyPair.generate("module")

    def host_data(self, provider_key: str, link_values: dict[str, str] | None = None) -> HostData:
        host = KeyPair.generate("server")
        link = LinkDefinition(
            actor_id=self.actor.public_key,
            provider_id=provider_key,
            link_name=self.link_name,
            contract_id=CONTRACT_ID,
            values=dict(link_values or {}),
        )
        return HostData(
            host_id=host.public_key,
            lattice_rpc_prefix=self.prefix,
            link_name=self.link_name,
            lattice_rpc_url=self.nats_url.removeprefix("nats://"),  # as the OTP host sends it
            provider_key=provider_key,
            invocation_seed=self.cluster.seed,
            env_values={},
            instance_id=str(uuid.uuid4()),
            link_definitions=[link],
            cluster_issuers=[self.cluster.public_key],
            structured_logging=True,
        )

    def driver_identity(self) -> dict[str, str]:
        """What the driver needs to sign invocations (a throwaway seed, passed over stdin)."""
        return {
            "cluster_seed": self.cluster.seed,
            "actor": self.actor.public_key,
            "prefix": self.prefix,
            "link_name": self.link_name,
        }


class Provider:
    """One provider process (its own provider key, so its RPC subject is its own)."""

    def __init__(
        self, ws: Workspace, lattice: Lattice, name: str, link_values: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.key = KeyPair.generate("service").public_key
        self.subjects = Subjects(lattice.prefix, self.key, lattice.link_name)
        self.host_data = lattice.host_data(self.key, link_values)
        self.proc = ProviderProcess(
            self.host_data.to_stdin_line(), PROVIDER_COMMAND, log_dir=ws.dir, name=name
        )
        self.started_wall: float | None = None
        ws.track(self.proc)

    @property
    def rpc(self) -> str:
        return self.subjects.rpc

    def start(self) -> Provider:
        self.started_wall = time.time()
        self.proc.start()
        return self

    def kill(self) -> None:
        self.proc.kill()

    def logs(self) -> list[dict[str, Any]]:
        """The structured (JSON) log lines written so far."""
        events = []
        for line in self.proc.stderr_text().splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    events.append(event)
        return events

    def wait_log(self, events: str | Sequence[str], timeout: float = 20.0) -> dict[str, Any]:
        """Block until a log line with one of ``events`` appears; return it."""
        wanted = {events} if isinstance(events, str) else set(events)
        deadline = time.monotonic() + timeout
        while True:
            for event in self.logs():
                if event.get("event") in wanted:
                    return event
            if not self.proc.is_running():
                raise RuntimeError(f"{self.name} exited:\n{self.proc.stderr_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name}: no {sorted(wanted)} log line within {timeout}s:\n"
                    f"{self.proc.stderr_text()[-3000:]}"
                )
            time.sleep(0.02)  # timings come from the log lines' own timestamps

    def wait_ready(self, timeout: float = 20.0) -> None:
        self.wait_log("provider ready", timeout)

    def wait_replicating(self, timeout: float = 60.0) -> dict[str, Any]:
        """Until the replica has replayed (or found nobody to replay from)."""
        return self.wait_log(
            ("replay complete", "no peer offered a snapshot; starting from local state"), timeout
        )


def log_time(event: dict[str, Any]) -> float:
    """The wall-clock time (Unix seconds) of a structlog JSON line."""
    return dt.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def start_echo(ws: Workspace, url: str, subject: str, name: str = "echo") -> subprocess.Popen:
    proc = ws.spawn(
        [str(Path(__file__)), "echo", "--url", url, "--subject", subject],
        name,
        stdout=subprocess.PIPE,
    )
    _wait_ready_line(proc, ws, name)
    return proc


def start_sink(
    ws: Workspace, url: str, subject: str, count: int, done: str, name: str = "sink"
) -> subprocess.Popen:
    args = [
        str(Path(__file__)),
        "sink",
        "--url",
        url,
        "--subject",
        subject,
        "--count",
        str(count),
        "--done",
        done,
    ]
    proc = ws.spawn(args, name, stdout=subprocess.PIPE)
    _wait_ready_line(proc, ws, name)
    return proc


def _wait_ready_line(proc: subprocess.Popen, ws: Workspace, name: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != b"ready":
        raise RuntimeError(f"{name} did not start: {line!r}\n{ws.log_tail(name)}")


class DriverProcess:
    """The load driver in its own interpreter; see the module docstring for the protocol."""

    def __init__(
        self,
        ws: Workspace,
        spec: dict[str, Any],
        name: str = "driver",
        on_barrier: Callable[[str], None] | None = None,
    ) -> None:
        self.ws = ws
        self.spec = spec
        self.name = name
        self.on_barrier = on_barrier

    def run(self, timeout: float = 300.0) -> dict[str, Any]:
        proc = self.ws.spawn(
            [str(Path(__file__)), "driver"],
            self.name,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(self.spec).encode() + b"\n")
        proc.stdin.flush()
        deadline = time.monotonic() + timeout
        try:
            for raw in proc.stdout:
                message = json.loads(raw)
                if message.get("event") == "barrier":
                    if self.on_barrier is not None:
                        self.on_barrier(message["name"])
                    proc.stdin.write(b"go\n")
                    proc.stdin.flush()
                elif message.get("event") == "result":
                    return message
                if time.monotonic() > deadline:
                    break
        finally:
            with contextlib.suppress(Exception):
                proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        raise RuntimeError(f"driver failed (exit {proc.poll()}):\n{self.ws.log_tail(self.name)}")


# ------------------------------------------------------------------------------ driver specs
def kv_payloads(provider: Provider, op: str, key_fmt: str, count: int, **extra: Any) -> dict:
    """A payload set: ``count`` signed ``op`` invocations for ``provider`` (see the driver)."""
    return {"provider_key": provider.key, "op": op, "key_fmt": key_fmt, "count": count, **extra}


def closed(
    name: str,
    subject: str,
    payloads: str,
    inflight: int,
    seconds: float,
    n: int = 10**7,
    check: str = "kv",
    cpu_pids: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A closed-loop phase: ``n`` requests, ``inflight`` at a time, at most ``seconds``;
    with ``cpu_pids`` ({name: pid}) the CPU time of those processes and the driver too."""
    phase = {
        "name": name,
        "kind": "closed",
        "subject": subject,
        "payloads": payloads,
        "n": n,
        "inflight": inflight,
        "time_limit": seconds,
        "check": check,
    }
    if cpu_pids:
        phase["cpu_pids"] = cpu_pids
    return phase


def kv_phase(
    name: str, bucket: str, op: str, inflight: int, seconds: float, n: int = 10**7, **extra: Any
) -> dict[str, Any]:
    """nats-py JetStream KV ``put``/``get`` in a closed loop (bucket created on first use,
    memory storage, direct get on; ``extra``: key_count, value_size, key_prefix, storage,
    direct, cpu_pids)."""
    return {
        "name": name,
        "kind": "kv",
        "bucket": bucket,
        "op": op,
        "n": n,
        "inflight": inflight,
        "time_limit": seconds,
        **extra,
    }


def sweep(name: str, subject: str, payloads: str, timeout: float, inflight: int = 64) -> dict:
    """Get every key of ``payloads`` until all exist (see :func:`_sweep`)."""
    return {
        "name": name,
        "kind": "sweep",
        "subject": subject,
        "payloads": payloads,
        "timeout": timeout,
        "inflight": inflight,
    }


# ------------------------------------------------------------------------------ the driver
def _build_payloads(identity: dict[str, str], spec: dict[str, Any]) -> list[bytes]:
    """Signed invocation bytes: ``spec`` = {provider_key, op, key_fmt, key_start, key_count,
    count, value_size, key_step}; request ``i`` uses key number
    ``key_start + (i % key_count) * key_step``."""
    client = KeyValueClient(
        None,  # type: ignore[arg-type]  (only build_invocation is used)
        lattice_prefix=identity["prefix"],
        provider_key=spec["provider_key"],
        link_name=identity["link_name"],
        signer=KeyPair.from_seed(identity["cluster_seed"]),
        actor_key=identity["actor"],
    )
    op = resolve_operation(f"KeyValue.{spec['op']}")
    key_fmt, start = spec.get("key_fmt", "bench:{i}"), spec.get("key_start", 0)
    key_count, step = spec.get("key_count", spec["count"]), spec.get("key_step", 1)
    value_size = spec.get("value_size", 32)
    payloads = []
    for i in range(spec["count"]):
        key = key_fmt.format(i=start + (i % key_count) * step)
        if spec["op"] == "Set":
            value = f"{i:0{value_size}d}"[-value_size:]
            arg: Any = SetRequest(key, value, 0)
        else:
            arg = key
        payloads.append(client.build_invocation(op.wire_name, op.encode_input(arg)).encode())
    return payloads


_GET = resolve_operation("KeyValue.Get")


def _reply_ok(data: bytes) -> bool:
    return InvocationResponse.decode(data).error is None


def _get_exists(data: bytes) -> bool:
    response = InvocationResponse.decode(data)
    if response.error is not None:
        raise RuntimeError(f"Get failed: {response.error}")
    return _GET.decode_output(response.msg).exists


async def _closed_loop(
    nc: Any,
    subject: str,
    payloads: list[bytes],
    *,
    n: int,
    inflight: int,
    time_limit: float,
    check: str | None,
    cpu_pids: dict[str, int] | None = None,
) -> dict[str, Any]:
    """``n`` requests (or until ``time_limit``) with ``inflight`` outstanding at all times."""

    def send(index: int) -> Any:
        return nc.request(subject, payloads[index % len(payloads)], timeout=REQUEST_TIMEOUT)

    def verdict(index: int, msg: Any) -> str | None:
        if check == "kv" and not _reply_ok(msg.data):
            return "error reply"
        if check == "echo" and msg.data != payloads[index % len(payloads)]:
            return "echo mismatch"
        return None

    return await _run_closed(send, verdict, n, inflight, time_limit, cpu_pids)


async def _run_closed(
    send: Callable[[int], Any],
    verdict: Callable[[int, Any], str | None],
    n: int,
    inflight: int,
    time_limit: float,
    cpu_pids: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The closed loop itself: ``await send(i)`` for i = 0, 1, ... from ``inflight`` workers.

    ``verdict`` names what is wrong with a reply (None: fine; counted with its latency).
    With ``cpu_pids`` ({name: pid}), the CPU time each of those processes and this driver
    spent during the phase is sampled at its first send and after its last reply.
    """
    perf = time.perf_counter
    latencies: list[float] = []
    errors: list[str] = []
    next_index = 0
    cpu_before = _cpu_sample(cpu_pids)
    machine_before = machine_busy_seconds()
    started = perf()
    deadline = started + time_limit

    async def worker() -> None:
        nonlocal next_index
        while next_index < n and perf() < deadline:
            index = next_index
            next_index += 1
            t0 = perf()
            try:
                reply = await send(index)
            except Exception as error:
                errors.append(type(error).__name__)
                continue
            elapsed = perf() - t0
            problem = verdict(index, reply)
            if problem is None:
                latencies.append(elapsed)
            else:
                errors.append(problem)

    await asyncio.gather(*(worker() for _ in range(inflight)))
    ended = perf()
    machine_after = machine_busy_seconds()
    cpu_after = _cpu_sample(cpu_pids)
    result = {
        "requests": len(latencies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors))[:5],
        "seconds": round(ended - started, 4),
        "rps": round(len(latencies) / (ended - started), 1) if ended > started else None,
        "t_start": started,
        "t_end": ended,
        "latency": summarize_ms(latencies),
    }
    if cpu_pids:
        result["cpu_seconds"] = _cpu_delta(cpu_before, cpu_after)
        result["machine_busy_seconds"] = round(machine_after - machine_before, 4)
        result["clk_tck"] = CLK_TCK
    return result


# JetStream baselines: nats-py's own KV and a bare ordered consumer.
async def _kv_bucket(js: Any, phase: dict[str, Any], buckets: dict[str, Any]) -> Any:
    """The phase's KV bucket, created (memory storage unless told) on first use."""
    from nats.js.api import KeyValueConfig, StorageType

    name = phase["bucket"]
    if name not in buckets:
        config = KeyValueConfig(
            bucket=name,
            history=1,
            storage=StorageType.FILE if phase.get("storage") == "file" else StorageType.MEMORY,
            direct=phase.get("direct", True),
        )
        buckets[name] = await js.create_key_value(config)
    return buckets[name]


async def _kv_closed(js: Any, phase: dict[str, Any], buckets: dict[str, Any]) -> dict[str, Any]:
    """nats-py ``KeyValue.put`` / ``get`` in a closed loop, keys ``{key_prefix}_{i}``."""
    kv = await _kv_bucket(js, phase, buckets)
    key_count, size = phase.get("key_count", 1000), phase.get("value_size", 32)
    keys = [f"{phase.get('key_prefix', 'bench')}_{i}" for i in range(key_count)]
    values = [f"{i:0{size}d}"[-size:].encode() for i in range(key_count)]
    if phase["op"] == "put":

        def send(index: int) -> Any:
            return kv.put(keys[index % key_count], values[index % key_count])

        def verdict(index: int, revision: Any) -> str | None:
            return None if isinstance(revision, int) and revision > 0 else "no revision"

    else:

        def send(index: int) -> Any:
            return kv.get(keys[index % key_count])

        def verdict(index: int, entry: Any) -> str | None:
            return None if entry.value is not None else "no value"

    return await _run_closed(
        send,
        verdict,
        phase.get("n", 10**7),
        phase["inflight"],
        phase.get("time_limit", 10.0),
        phase.get("cpu_pids"),
    )


async def _stream_read(js: Any, phase: dict[str, Any]) -> dict[str, Any]:
    """Read a stream's last message per subject with an ordered consumer, as the provider's
    JetStream replay does (stream info, then subscribe), but only counting the messages."""
    from nats.js.api import DeliverPolicy

    perf = time.perf_counter
    info = await js.stream_info(phase["stream"])
    expected = info.state.messages
    done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    received = 0

    async def on_message(msg: Any) -> None:
        nonlocal received
        received += 1
        if msg.metadata.num_pending == 0 and not done.done():
            done.set_result(perf())

    started = perf()
    sub = await js.subscribe(
        phase["subject"],
        stream=phase["stream"],
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        cb=on_message,
    )
    try:
        finished = await asyncio.wait_for(done, phase.get("timeout", 60.0))
    except TimeoutError:
        finished = None
    await sub.unsubscribe()
    seconds = None if finished is None else finished - started
    return {
        "expected": expected,
        "received": received,
        "seconds": None if seconds is None else round(seconds, 4),
        "msgs_per_sec": round(received / seconds) if seconds else None,
    }


async def _visibility(
    nc: Any, phase: dict[str, Any], sets: list[bytes], gets: list[bytes]
) -> dict[str, Any]:
    """Open loop: Set key i on A at ``rate``/s; then Get it on B back to back until it exists.

    Reported per key: from A's Set reply to the reply of B's first Get that found the key (an
    upper bound on replication latency; the poll RTT is the resolution, reported alongside).
    """
    perf = time.perf_counter
    rate, count = phase["rate"], min(len(sets), int(phase["rate"] * phase["duration"]))
    poll_timeout = phase.get("poll_timeout", 5.0)
    after_ack: list[float] = []
    after_send: list[float] = []
    poll_rtt: list[float] = []
    polls: list[int] = []
    lost = errors = 0

    async def one(i: int) -> None:
        nonlocal lost, errors
        t0 = perf()
        try:
            reply = await nc.request(phase["set_subject"], sets[i], timeout=REQUEST_TIMEOUT)
            if not _reply_ok(reply.data):
                errors += 1
                return
            t_ack = perf()
            tries = 0
            while True:
                ts = perf()
                reply = await nc.request(phase["get_subject"], gets[i], timeout=REQUEST_TIMEOUT)
                tr = perf()
                tries += 1
                if _get_exists(reply.data):
                    after_ack.append(tr - t_ack)
                    after_send.append(tr - t0)
                    poll_rtt.append(tr - ts)
                    polls.append(tries)
                    return
                if tr - t_ack > poll_timeout:
                    lost += 1
                    return
        except Exception:
            errors += 1

    started = perf()
    tasks = []
    for i in range(count):
        delay = started + i / rate - perf()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    ended = perf()
    return {
        "keys": count,
        "rate_target": rate,
        "rate_achieved": round(count / (ended - started), 1),
        "seconds": round(ended - started, 3),
        "lost": lost,
        "errors": errors,
        "visible_after_ack": summarize_ms(after_ack),
        "visible_after_send": summarize_ms(after_send),
        "poll_rtt": summarize_ms(poll_rtt),
        "polls_mean": round(sum(polls) / len(polls), 2) if polls else None,
    }


async def _sweep(nc: Any, phase: dict[str, Any], gets: list[bytes]) -> dict[str, Any]:
    """Get every key (``inflight`` at a time), then re-poll the missing ones until all exist.

    ``t_all`` bounds from above the moment the replica had every key: the later of the first
    sweep's end and the moment the last key ever seen missing was first seen present.
    ``t_last_missing`` (the latest send time of a Get that found a key missing) bounds it from
    below.
    """
    perf = time.perf_counter
    subject, inflight = phase["subject"], phase.get("inflight", 64)
    deadline = perf() + phase.get("timeout", 30.0)
    started = perf()
    pending = list(range(len(gets)))
    ever_missing: set[int] = set()
    last_missing_seen: float | None = None
    t_all: float | None = None
    rounds, first_missing, first_sweep_end = 0, None, None
    errors = 0

    async def check(indexes: list[int], out: list[tuple[int, bool, float, float]]) -> None:
        nonlocal errors
        while indexes:
            i = indexes.pop()
            ts = perf()
            try:
                reply = await nc.request(subject, gets[i], timeout=REQUEST_TIMEOUT)
                out.append((i, _get_exists(reply.data), ts, perf()))
            except Exception:
                errors += 1
                out.append((i, False, ts, perf()))

    while pending and perf() < deadline:
        queue = list(reversed(pending))
        results: list[tuple[int, bool, float, float]] = []
        await asyncio.gather(*(check(queue, results) for _ in range(min(inflight, len(queue)))))
        still = []
        for i, exists, ts, tr in results:
            if exists:
                if i in ever_missing:
                    t_all = tr if t_all is None else max(t_all, tr)
            else:
                ever_missing.add(i)
                still.append(i)
                last_missing_seen = ts if last_missing_seen is None else max(last_missing_seen, ts)
        if rounds == 0:
            first_missing, first_sweep_end = len(still), perf()
        rounds += 1
        pending = sorted(still)
    ended = perf()
    if pending:
        t_all = None
    elif first_sweep_end is not None:
        # Keys never seen missing were present when checked, at the latest by the first
        # sweep's end; keys seen missing became present by the time they were seen.
        t_all = max(t_all or first_sweep_end, first_sweep_end)
    return {
        "keys": len(gets),
        "complete": not pending,
        "remaining": len(pending),
        "missing_at_first_sweep": first_missing,
        "ever_missing": len(ever_missing),
        "first_sweep_seconds": round((first_sweep_end or ended) - started, 4),
        "rounds": rounds,
        "errors": errors,
        "t_start": started,
        "t_end": ended,
        "t_all": t_all,
        "t_last_missing": last_missing_seen,
    }


async def _pubsub(nc: Any, phase: dict[str, Any]) -> dict[str, Any]:
    """Raw nats-py throughput: publish ``count`` messages; the sink says when it has them all."""
    perf = time.perf_counter
    done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def on_done(msg: Any) -> None:
        if not done.done():
            done.set_result(perf())

    sub = await nc.subscribe(phase["done_subject"], cb=on_done)
    await nc.flush()
    body = os.urandom(phase["size"] // 2).hex().encode()[: phase["size"]]
    started = perf()
    for _ in range(phase["count"]):
        await nc.publish(phase["subject"], body)
    await nc.flush()
    published = perf()
    try:
        finished = await asyncio.wait_for(done, phase.get("timeout", 30.0))
    except TimeoutError:
        finished = None
    await sub.unsubscribe()
    seconds = None if finished is None else finished - started
    return {
        "messages": phase["count"],
        "size": len(body),
        "publish_seconds": round(published - started, 4),
        "seconds": None if seconds is None else round(seconds, 4),
        "msgs_per_sec": None if not seconds else round(phase["count"] / seconds, 1),
    }


async def _driver_main() -> None:
    import nats

    spec = json.loads(sys.stdin.readline())
    identity = spec["identity"]
    built = time.perf_counter()
    payloads = {name: _build_payloads(identity, p) for name, p in spec["payloads"].items()}
    sign_seconds = time.perf_counter() - built
    nc = await nats.connect(spec["url"], name="kvbench-driver", max_reconnect_attempts=0)
    js = nc.jetstream()  # only the kv and stream_read phases use it
    buckets: dict[str, Any] = {}
    loop = asyncio.get_running_loop()
    results: list[dict[str, Any]] = []
    try:
        for phase in spec["phases"]:
            kind = phase["kind"]
            if kind == "closed":
                result = await _closed_loop(
                    nc,
                    phase["subject"],
                    payloads[phase["payloads"]],
                    n=phase["n"],
                    inflight=phase["inflight"],
                    time_limit=phase.get("time_limit", 10.0),
                    check=phase.get("check"),
                    cpu_pids=phase.get("cpu_pids"),
                )
            elif kind == "kv":
                result = await _kv_closed(js, phase, buckets)
            elif kind == "stream_read":
                result = await _stream_read(js, phase)
            elif kind == "visibility":
                result = await _visibility(
                    nc, phase, payloads[phase["set_payloads"]], payloads[phase["get_payloads"]]
                )
            elif kind == "sweep":
                result = await _sweep(nc, phase, payloads[phase["payloads"]])
            elif kind == "pubsub":
                result = await _pubsub(nc, phase)
            elif kind == "barrier":
                print(json.dumps({"event": "barrier", "name": phase["name"]}), flush=True)
                await loop.run_in_executor(None, sys.stdin.readline)
                result = {"t": time.perf_counter()}
            elif kind == "sleep":
                await asyncio.sleep(phase["seconds"])
                result = {}
            else:
                raise ValueError(f"unknown phase kind {kind!r}")
            results.append({"name": phase["name"], "kind": kind, **result})
    finally:
        await nc.close()
    print(
        json.dumps({"event": "result", "sign_seconds": sign_seconds, "phases": results}), flush=True
    )


# ------------------------------------------------------------------------------ baselines
async def _echo_main(url: str, subject: str) -> None:
    """A bare responder: same queue group as the provider, replies with the request bytes."""
    import nats

    nc = await nats.connect(url, name="kvbench-echo")

    async def on_request(msg: Any) -> None:
        if msg.reply:
            await nc.publish(msg.reply, msg.data)

    await nc.subscribe(subject, queue=RPC_QUEUE_GROUP, cb=on_request)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()  # until killed


async def _sink_main(url: str, subject: str, count: int, done: str) -> None:
    import nats

    nc = await nats.connect(url, name="kvbench-sink")
    received = 0

    async def on_message(msg: Any) -> None:
        nonlocal received
        received += 1
        if received % count == 0:  # one "done" per round of ``count`` messages
            await nc.publish(done, str(received).encode())

    await nc.subscribe(subject, cb=on_message)  # default limits, as the provider's
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()  # until killed


def run_async(main: Any) -> None:
    """Run a coroutine on uvloop when available (the provider uses it too)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def _cli() -> None:
    parser = argparse.ArgumentParser(description="benchmark child processes (internal)")
    sub = parser.add_subparsers(dest="role", required=True)
    sub.add_parser("driver", help="run a load spec read from stdin")
    echo = sub.add_parser("echo", help="bare nats-py echo responder")
    sink = sub.add_parser("sink", help="count messages; publish on --done every --count")
    for p in (echo, sink):
        p.add_argument("--url", required=True)
        p.add_argument("--subject", required=True)
    sink.add_argument("--count", type=int, required=True)
    sink.add_argument("--done", required=True)
    args = parser.parse_args()
    if args.role == "driver":
        check_clock()
        run_async(_driver_main())
    elif args.role == "echo":
        run_async(_echo_main(args.url, args.subject))
    else:
        run_async(_sink_main(args.url, args.subject, args.count, args.done))


if __name__ == "__main__":
    _cli()
