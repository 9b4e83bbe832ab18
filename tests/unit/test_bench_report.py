"""``nats-kvcache bench-report`` turns result files into charts, tolerating odd shapes.

The synthetic results mimic ``bench/``'s documents (metadata + nested ``results``) and
a looser "name + rows" file; the CLI runs as a user runs it, then the PNGs are opened.
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from provider.cli.bench_report import read_file, unit_of
from tests.harness.repo import REPO_ROOT

CLI = [sys.executable, "-m", "provider.cli.main", "bench-report"]

RPC_LIKE = {
    "name": "rpc",
    "command": "python bench/rpc.py",
    "timestamp": "2026-01-01T00:00:00+00:00",
    "quick": False,
    "wall_seconds": 12.5,
    "machine": {"nproc": 2, "python": "3.11.7", "loadavg": [1.0, 0.5, 0.2]},
    "results": {
        "levels": [
            {
                "inflight": 1,
                "echo": {"rps": 7000.0, "p50_ms": 0.12, "p99_ms": 0.3, "requests": 100},
                "get": {"rps": 3500.0, "p50_ms": 0.25, "p99_ms": 0.45, "requests": 100},
                "get_rps_ratio_vs_echo": 0.5,
            },
            {
                "inflight": 64,
                "echo": {"rps": 32000.0, "p50_ms": 1.7, "p99_ms": 6.5, "requests": 100},
                "get": {"rps": 8000.0, "p50_ms": 7.3, "p99_ms": 21.0, "requests": 100},
                "get_rps_ratio_vs_echo": 0.25,
            },
        ],
        "phases": [
            {
                "name": "warmup",
                "t_start": 1308.04,
                "t_end": 1308.32,
                "latency": {"n": 2000, "p50_ms": 1.9, "p99_ms": 3.9},
            }
        ],
        "replay": {"runs": [{"keys": 1000, "keys_per_sec": 66000, "replay_seconds": 1.5}]},
        "memory": {"proxy_bytes": {"to_b:changes": 1234, "from_b:digest": 99}},
        "goal": "<= 1.2",
        "goal_met": False,
        "errors": 0,
        "driver_sign_seconds": 1.66,
    },
}

LOOSE = {
    "name": "loose",
    "rows": [
        {"label": "small", "p50_ms": 1.0, "rps": 10.0},
        {"label": "large", "p50_ms": 4.0, "rps": 2.5},
    ],
}


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    results.mkdir()
    (results / "rpc.json").write_text(json.dumps(RPC_LIKE))
    (results / "loose.json").write_text(json.dumps(LOOSE))
    (results / "broken.json").write_text("{not json")
    (results / "words.json").write_text(json.dumps({"name": "words", "results": {"a": "b"}}))
    (results / "notes.txt").write_text("ignored: not *.json")
    return results


def report(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MPLBACKEND": "Agg", "MPLCONFIGDIR": str(cwd / ".mpl")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_units_come_from_metric_names() -> None:
    assert unit_of("p50_ms") == unit_of("b_lag_after_last_ack_ms") == "ms"
    assert unit_of("rps") == unit_of("keys_per_sec") == unit_of("msgs_per_sec[1]") == "per_s"
    assert unit_of("get_rps_ratio_vs_echo") == unit_of("ratio") == "ratio"
    assert unit_of("replay_seconds") == unit_of("all_present_after_heal_s_upper") == "s"
    assert unit_of("rss_bytes_per_key") == "bytes"
    assert unit_of("us_per_insert") == "us"
    for not_charted in ("requests", "errors", "keys", "t_start", "t", "n", "goal_met"):
        assert unit_of(not_charted) is None, not_charted


def test_reader_labels_rows_and_keeps_only_charted_numbers(results_dir: Path) -> None:
    bench = read_file(results_dir / "rpc.json")
    assert bench is not None and bench.name == "rpc"
    assert "2 CPUs" in bench.description and "Python 3.11.7" in bench.description
    assert set(bench.sections) == {"summary", "levels", "phases", "replay", "memory"}
    levels = {(m.label, m.metric): m.value for m in bench.sections["levels"]}
    assert levels[("inflight=64 / get", "p99_ms")] == 21.0
    assert levels[("inflight=1", "get_rps_ratio_vs_echo")] == 0.5
    assert not any(m.metric == "requests" for m in bench.sections["levels"])
    phases = bench.sections["phases"]
    assert [(m.label, m.metric) for m in phases] == [
        ("warmup / latency", "p50_ms"),
        ("warmup / latency", "p99_ms"),
    ]
    memory = bench.sections["memory"]  # the unit comes from the parent key
    assert {m.metric for m in memory} == {"to_b:changes", "from_b:digest"}
    assert {m.unit for m in memory} == {"bytes"}
    assert [(m.metric, m.unit) for m in bench.sections["summary"]] == [("driver_sign_seconds", "s")]
    loose = read_file(results_dir / "loose.json")
    assert loose is not None and set(loose.sections) == {"rows"}
    assert {m.label for m in loose.sections["rows"]} == {"small", "large"}
    assert read_file(results_dir / "broken.json") is None
    assert read_file(results_dir / "words.json") is None


def test_cli_renders_readable_pngs_and_an_index(results_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "docs" / "bench"
    result = report("--results", str(results_dir), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    pngs = sorted(out.glob("*.png"))
    names = {p.name for p in pngs}
    assert "rpc--levels--ms.png" in names and "rpc--levels--per_s.png" in names
    assert "rpc--levels--ratio.png" in names and "rpc--memory--bytes.png" in names
    assert "loose--rows--ms.png" in names and "loose--rows--per_s.png" in names
    assert not any(n.startswith(("broken", "words")) for n in names)
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 5_000, png.name
        with Image.open(png) as image:
            width, height = image.size
            assert width >= 800 and height >= 250, (png.name, image.size)
            assert len(image.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 10  # not blank
        assert str(png) in result.stdout

    index = (out / "index.md").read_text()
    for png in pngs:
        assert f"]({png.name})" in index
    assert "## rpc" in index and "## loose" in index


def test_big_sections_are_split_into_parts_not_truncated(tmp_path: Path) -> None:
    rows = [{"name": f"step {i}", "p50_ms": i + 1.0, "p99_ms": 2 * i + 1.0} for i in range(30)]
    results = tmp_path / "results"
    results.mkdir()
    (results / "big.json").write_text(json.dumps({"name": "big", "results": {"phases": rows}}))
    out = tmp_path / "out"
    result = report("--results", str(results), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("*.png")) == [
        "big--phases--ms-1.png",
        "big--phases--ms-2.png",
    ]


def test_cli_without_results(tmp_path: Path) -> None:
    missing = report(
        "--results", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), cwd=tmp_path
    )
    assert missing.returncode == 1 and "no results dir" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = report("--results", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert empty.returncode == 1 and "no usable" in empty.stderr
    assert not (tmp_path / "o").exists()


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, timeout=30)


def test_committed_report_is_what_the_committed_results_produce(tmp_path: Path) -> None:
    """``make bench-report`` on a fresh clone must not change ``docs/bench``: the committed
    index (and its set of charts) is what the committed ``bench/results`` render to. Both are
    read from HEAD, not the working tree, so a regeneration in progress (results written,
    charts not yet) does not fail this; PNG bytes are not compared (fonts, matplotlib versions)."""
    if _git("rev-parse", "--verify", "HEAD").returncode != 0:
        pytest.skip("not a git checkout")
    pytest.importorskip("matplotlib")
    listed = _git("ls-tree", "--name-only", "HEAD", "bench/results/", "docs/bench/")
    names = listed.stdout.decode().split()
    results = tmp_path / "results"
    results.mkdir()
    for name in (n for n in names if n.startswith("bench/results/") and n.endswith(".json")):
        (results / Path(name).name).write_bytes(_git("show", f"HEAD:{name}").stdout)
    committed_charts = sorted(Path(n).name for n in names if n.endswith(".png"))
    committed_index = _git("show", "HEAD:docs/bench/index.md").stdout.decode()

    out = tmp_path / "out"
    result = report("--results", str(results), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    hint = "run `make bench-report` and commit docs/bench together with bench/results"
    rendered = (out / "index.md").read_text(encoding="utf-8")
    if rendered != committed_index:
        diff = difflib.unified_diff(
            committed_index.splitlines(),
            rendered.splitlines(),
            "committed",
            "rendered",
            lineterm="",
        )
        pytest.fail(f"docs/bench/index.md is stale ({hint}):\n" + "\n".join(diff))
    assert sorted(p.name for p in out.glob("*.png")) == committed_charts, hint
