"""The bench report (plugins/module_utils/bench_report.py) and its command line
(python -m openfuyao_pd.benchreport): vLLM bench result -> table, comparison, plot; bad files -> one
line, exit 2. The action openfuyao.pd.bench_report is in test_bench_report_action.py."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from ansible_collections.openfuyao.pd.plugins.module_utils import bench_report as benchreport
from hypothesis import given
from hypothesis import strategies as st
from openfuyao_pd.benchreport import main

# The shape `vllm bench serve --save-result --percentile-metrics ttft,tpot,itl,e2el
# --metric-percentiles 50,90,99` writes (vllm 0.32 benchmarks/serve.py), numbers invented.
RESULT = {
    "date": "20261122-031500", "backend": "vllm", "model_id": "tiny-llama", "num_prompts": 10,
    "request_rate": 1.0, "duration": 11.5, "completed": 10, "failed": 0,
    "total_input_tokens": 2560, "total_output_tokens": 640,
    "request_throughput": 0.87, "request_goodput": None, "output_throughput": 55.6,
    "total_token_throughput": 278.2,
    "mean_ttft_ms": 120.0, "median_ttft_ms": 110.0, "std_ttft_ms": 9.0,
    "p50_ttft_ms": 110.0, "p90_ttft_ms": 150.0, "p99_ttft_ms": 180.0,
    "mean_tpot_ms": 20.0, "median_tpot_ms": 19.0, "p50_tpot_ms": 19.0, "p90_tpot_ms": 25.0, "p99_tpot_ms": 30.0,
    "mean_itl_ms": 20.0, "median_itl_ms": 18.0, "p50_itl_ms": 18.0, "p90_itl_ms": 28.0, "p99_itl_ms": 40.0,
    "p50_e2el_ms": 1400.0, "p90_e2el_ms": 1600.0, "p99_e2el_ms": 1700.0,
}


def write(tmp_path: Path, name: str, doc: object) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def test_summary_reads_vllm_percentile_keys() -> None:
    s = benchreport.summarize(RESULT)
    assert s.latency_ms["ttft"] == {50: 110.0, 90: 150.0, 99: 180.0}
    assert s.latency_ms["itl"][99] == 40.0
    assert s.throughput["output_throughput"] == 55.6
    assert s.throughput["request_goodput"] is None
    assert (s.completed, s.failed) == (10, 0)


def test_p50_falls_back_to_median_and_missing_percentile_is_na() -> None:
    # vLLM's default --metric-percentiles is "99": only median and p99 exist.
    result = {k: v for k, v in RESULT.items() if not k.startswith(("p50_", "p90_"))}
    s = benchreport.summarize(result)
    assert s.latency_ms["ttft"] == {50: 110.0, 90: None, 99: 180.0}
    table = benchreport.format_table(s)
    assert "TTFT p90 (ms)" in table and "n/a" in table


def test_percentiles_computed_from_detailed_samples() -> None:
    ttfts = [0.1, 0.2, 0.3, 0.4, 0.5]
    result = {"completed": 5, "failed": 0, "duration": 3.0, "ttfts": ttfts,
              "itls": [[0.01, 0.02], [0.03]], "latencies": [1.0, 1.1, 1.2, 1.3, 1.4],
              "output_lens": [3, 3, 3, 3, 3]}
    s = benchreport.summarize(result)
    assert s.latency_ms["ttft"][50] == pytest.approx(300.0)
    assert s.latency_ms["ttft"][90] == pytest.approx(460.0)
    assert s.latency_ms["itl"][50] == pytest.approx(20.0)
    # tpot = (latency - ttft) / (out - 1) = 0.45 s for every request here
    assert s.latency_ms["tpot"][99] == pytest.approx(450.0)


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=50),
       st.integers(min_value=0, max_value=100))
def test_percentile_matches_sorted_bounds(values: list[float], pct: int) -> None:
    p = benchreport.percentile(values, pct)
    assert p is not None
    assert min(values) <= p <= max(values)
    assert benchreport.percentile(values, 0) == min(values)
    assert benchreport.percentile(values, 100) == max(values)


def test_percentile_agrees_with_linear_interpolation() -> None:
    rng = random.Random(7)
    values = [rng.random() for _ in range(37)]
    ordered = sorted(values)
    # rank 0.9 * 36 = 32.4 -> between the 33rd and 34th values
    expected = ordered[32] + (ordered[33] - ordered[32]) * 0.4
    assert benchreport.percentile(values, 90) == pytest.approx(expected)


def test_compare_marks_direction() -> None:
    prev = dict(RESULT, p99_ttft_ms=200.0, output_throughput=50.0)
    table = benchreport.format_table(benchreport.summarize(RESULT), benchreport.summarize(prev))
    ttft_line = next(line for line in table.splitlines() if line.startswith("TTFT p99"))
    tput_line = next(line for line in table.splitlines() if line.startswith("output throughput"))
    assert "-10.0% (better)" in ttft_line  # lower latency is better
    assert "+11.2% (better)" in tput_line  # higher throughput is better
    worse = benchreport.format_table(benchreport.summarize(prev), benchreport.summarize(RESULT))
    assert "(worse)" in next(line for line in worse.splitlines() if line.startswith("TTFT p99"))


def test_goodput_row_explains_missing_slo() -> None:
    table = benchreport.format_table(benchreport.summarize(RESULT))
    assert "goodput (req/s) [no --goodput SLO set]" in table
    with_slo = benchreport.format_table(benchreport.summarize(dict(RESULT, request_goodput=0.5)))
    assert "[no --goodput SLO set]" not in with_slo and "0.50" in with_slo


def test_main_table_and_append_result_takes_last(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(dict(RESULT, p99_ttft_ms=999.0)) + "\n" + json.dumps(RESULT) + "\n")
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "180.00" in out and "999.00" not in out


def test_main_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cur = write(tmp_path, "cur.json", RESULT)
    prev = write(tmp_path, "prev.json", dict(RESULT, failed=2))
    assert main([str(cur), "--previous", str(prev), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["current"]["latency_ms"]["ttft"]["p90"] == 150.0
    assert doc["previous"]["failed"] == 2
    assert "previous" in doc["table"].splitlines()[0]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "no such file"),
        ("", "empty file"),
        ("{not json", "not JSON"),
        (json.dumps({"hello": 1}), "not a `vllm bench serve` result"),
    ],
)
def test_bad_input_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   content: str | None, needle: str) -> None:
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and str(path) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_plot_writes_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    detailed = dict(RESULT, ttfts=[0.1, 0.12, 0.2])
    out = benchreport.plot(benchreport.summarize(detailed), tmp_path / "p" / "bench.png",
                           benchreport.summarize(RESULT), detailed)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    cur = write(tmp_path, "cur.json", RESULT)
    assert main([str(cur), "--plot", str(tmp_path / "x.png")]) == 0
    out = capsys.readouterr().out
    assert "no plot: matplotlib is not installed" in out
    assert "TTFT p50 (ms)" in out  # the table is still printed
    assert not (tmp_path / "x.png").exists()


def test_report_is_the_structured_summary_and_check_mode_writes_no_plot(tmp_path: Path) -> None:
    cur = write(tmp_path, "cur.json", RESULT)
    doc = benchreport.report(cur, None, tmp_path / "x.png", check_mode=True)
    assert doc["current"]["completed"] == 10 and doc["previous"] is None
    assert doc["plot"] == f"check mode: the plot would be written to {tmp_path / 'x.png'}"
    assert doc["plot_written"] is False and not (tmp_path / "x.png").exists()
    assert doc["table"] == benchreport.format_table(benchreport.summarize(RESULT))
    assert benchreport.report(cur)["plot"] is None


def test_the_command_line_runs_without_ansible_from_the_collection_tree(tmp_path: Path) -> None:
    """The host-side package's command line loads module_utils by its path: no collection on sys.path needed."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    cur = write(tmp_path, "cur.json", RESULT)
    code = ("import sys; sys.path = [p for p in sys.path if 'collections' not in p and 'site-packages' not in p]; "
            "sys.path.insert(0, sys.argv[1]); from openfuyao_pd.benchreport import main; "
            "assert 'ansible' not in sys.modules; sys.exit(main(sys.argv[2:]))")
    proc = subprocess.run([sys.executable, "-c", code, str(root / "files" / "connector"), str(cur)],
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split() == ["metric", "this", "run"]
