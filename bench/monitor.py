"""Monitor benchmark: streaming drift over a 10-million-row prediction log (issue 5, item 3).

Run from the repository root with the project's virtualenv:

    .venv/bin/python bench/monitor.py                  # 10M rows x 10 features (make bench-monitor)
    .venv/bin/python bench/monitor.py --rows 2000000   # smaller, to check it works
    .venv/bin/python bench/monitor.py --json /tmp/monitor.json

What it does:

1. Generates (once; reused while the cached copy has the same parameters) a synthetic
   prediction log in the contract layout, `<data-dir>/bench/predictions/part-*.parquet`: one
   file per `--file-rows` rows, written chunk by chunk, so the generator never holds more than
   one file's rows. Columns as the server writes them: `request_id`, `row`, `timestamp`,
   `model_name`, `model_version`, `feature.<name>` (7 numeric, 3 categorical), `prediction`
   (a 3-class label) and `proba.<class>`. Three columns drift on purpose (a mean shift, a
   scale change and a categorical shift); the rest follow the reference distribution.
2. Builds the reference profile from a separate 200,000-row reference sample of the
   undrifted distribution (what evaluate logs with a model) and saves it as JSON.
3. Runs each measurement in a fresh Python process, so that its peak RSS
   (`getrusage(RUSAGE_SELF).ru_maxrss`) is its own; the RSS after the imports is reported
   separately as the baseline:
   - `stream`: every file read with `pyarrow.parquet.ParquetFile.iter_batches` over only the
     11 columns drift needs, `chunk_rows` rows at a time (from `MonitoringConfig`), each batch
     converted to pandas and fed to `DriftAccumulator.update`;
   - the same on the first `--compare-rows` rows, then `memory`: those rows read whole into
     one DataFrame and passed to `detect_drift` as one chunk (the all-in-memory computation),
     and `raw`: the exact statistics with scipy on the raw values, which needs the raw
     reference sample in memory too (how tools that keep the reference data work). The
     streaming and in-memory reports are compared field by field, and the streamed
     Wasserstein distances against the exact ones.
4. Prints the figures and checks the issue's targets: 10M rows x 10 features in under 60 s
   and under 500 MB peak memory.

Text columns are read as Arrow dictionaries (pandas categoricals) by default, which is how a
log of repeated labels is stored in Parquet anyway; `--strings plain` reads them as strings.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
# Measure the checkout this script is in, whatever is installed in the environment.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
DEFAULT_DATA_DIR = REPO_ROOT / "tmp" / "bench" / "monitor"
MODEL = "bench"
FORMAT = 1  # bump when the generated data changes, to invalidate cached copies

NUMERIC = ["f0_normal", "f1_lognormal", "f2_uniform", "f3_scale", "f4_exponential"]
NUMERIC += ["f5_counts", "f6_with_missing"]
CATEGORICAL = ["c0_shifted", "c1_ten_levels", "c2_fifty_levels"]
CLASSES = ["setosa", "versicolor", "virginica"]
DRIFTED = {"f0_normal", "f3_scale", "c0_shifted"}
TARGET_SECONDS = 60.0
TARGET_PEAK_MB = 500.0
REFERENCE_ROWS = 200_000


def _levels(count: int) -> list[str]:
    return [f"level_{i:02d}" for i in range(count)]


def _zipf_shares(count: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, count + 1)
    return np.asarray(weights / weights.sum())


def _features(rng: np.random.Generator, rows: int, *, drifted: bool) -> dict[str, Any]:
    """Feature columns as numpy arrays (numeric) and category codes (categorical)."""
    import pyarrow as pa

    f6 = rng.normal(100.0, 15.0, rows)
    f6[rng.random(rows) < 0.05] = np.nan

    def text(codes: np.ndarray, labels: list[str]) -> pa.Array:
        dictionary = pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), labels)
        return dictionary.cast(pa.string())

    c0_shares = [0.3, 0.3, 0.4] if drifted else [0.5, 0.3, 0.2]
    return {
        "f0_normal": rng.normal(0.5 if drifted else 0.0, 1.0, rows),
        "f1_lognormal": rng.lognormal(0.0, 1.0, rows),
        "f2_uniform": rng.uniform(0.0, 10.0, rows),
        "f3_scale": rng.normal(5.0, 3.0 if drifted else 2.0, rows),
        "f4_exponential": rng.exponential(1.0, rows),
        "f5_counts": rng.poisson(3.0, rows).astype(np.float64),
        "f6_with_missing": f6,
        "c0_shifted": text(rng.choice(3, rows, p=c0_shares), _levels(3)),
        "c1_ten_levels": text(rng.integers(0, 10, rows), _levels(10)),
        "c2_fifty_levels": text(rng.choice(50, rows, p=_zipf_shares(50)), _levels(50)),
    }


def _predictions(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
    logits = rng.normal(0.0, 1.0, (rows, len(CLASSES)))
    logits[:, 0] += 0.5
    proba = np.exp(logits)
    proba /= proba.sum(axis=1, keepdims=True)
    return np.argmax(proba, axis=1), proba


def _part_table(seed: int, index: int, start: int, rows: int) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    rng = np.random.default_rng([seed, index])
    columns: dict[str, Any] = {
        "request_id": pc.cast(pa.array(np.arange(start, start + rows)), pa.string()),
        "row": pa.array(np.zeros(rows, dtype=np.int64)),
        "timestamp": pa.array(
            1_767_225_600_000_000 + np.arange(start, start + rows, dtype=np.int64) * 100
        ).cast(pa.timestamp("us", tz="UTC")),
        "model_name": pa.repeat(MODEL, rows),
        "model_version": pa.repeat("1", rows),
    }
    for name, values in _features(rng, rows, drifted=True).items():
        columns[f"feature.{name}"] = values
    labels, proba = _predictions(rng, rows)
    columns["prediction"] = pa.DictionaryArray.from_arrays(
        pa.array(labels.astype(np.int32)), CLASSES
    ).cast(pa.string())
    for i, label in enumerate(CLASSES):
        columns[f"proba.{label}"] = proba[:, i]
    return pa.table(columns)


def _reference_frame(seed: int) -> tuple[Any, np.ndarray]:
    import pandas as pd

    rng = np.random.default_rng([seed, 10**9])
    features = {
        name: (values.to_pandas() if hasattr(values, "to_pandas") else values)
        for name, values in _features(rng, REFERENCE_ROWS, drifted=False).items()
    }
    labels, _ = _predictions(rng, REFERENCE_ROWS)
    frame = pd.DataFrame(features)
    return frame, np.asarray(CLASSES)[labels]


def _log_dir(data_dir: Path) -> Path:
    return data_dir / MODEL / "predictions"


def _data_params(rows: int, file_rows: int, seed: int) -> dict[str, int]:
    return {"format": FORMAT, "rows": rows, "file_rows": file_rows, "seed": seed}


def _is_cached(data_dir: Path, params: dict[str, int]) -> bool:
    marker = data_dir / "complete.json"
    return marker.is_file() and json.loads(marker.read_text()) == params


def _generate(data_dir: Path, rows: int, file_rows: int, seed: int) -> None:
    """Write the log file by file, then the reference profile, then the completion marker."""
    import pyarrow.parquet as pq

    from pipeline.monitoring.profile import build_reference_profile

    shutil.rmtree(data_dir, ignore_errors=True)
    log_dir = _log_dir(data_dir)
    log_dir.mkdir(parents=True)
    for index, start in enumerate(range(0, rows, file_rows)):
        table = _part_table(seed, index, start, min(file_rows, rows - start))
        stamp = f"20260101T{index // 3600:02d}{index // 60 % 60:02d}{index % 60:02d}000000"
        path = log_dir / f"part-{stamp}-{os.getpid()}-{index:06d}.parquet"
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp, row_group_size=250_000)
        tmp.rename(path)
        del table
    frame, predictions = _reference_frame(seed)
    profile = build_reference_profile(
        frame, predictions, numeric=NUMERIC, categorical=CATEGORICAL, task="classification"
    )
    (data_dir / "reference_profile.json").write_text(profile.to_json())
    (data_dir / "complete.json").write_text(json.dumps(_data_params(rows, file_rows, seed)))


def _directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --- measurements, each in its own process ------------------------------------------------


def _rss_mb() -> float:
    """Peak RSS of this process so far. Linux carries the parent's peak into a child across
    fork/exec, which is why the orchestrating process stays small (it never imports pandas
    and generates nothing itself)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _hwm_mb() -> float:
    """The same peak from /proc (this process's memory only), as a cross-check."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _needed_columns() -> list[str]:
    return [f"feature.{name}" for name in (*NUMERIC, *CATEGORICAL)] + ["prediction"]


def _text_columns() -> list[str]:
    return [f"feature.{name}" for name in CATEGORICAL] + ["prediction"]


def _rename(frame: Any) -> Any:
    frame.columns = [c.removeprefix("feature.") for c in frame.columns]
    return frame


def _batches(data_dir: Path, chunk_rows: int, limit: int | None, dictionary: bool) -> Any:
    """(frame, seconds spent reading and converting) per chunk, up to `limit` rows."""
    import pyarrow.parquet as pq

    left = limit
    for path in sorted(_log_dir(data_dir).glob("part-*.parquet")):
        parquet = pq.ParquetFile(path, read_dictionary=_text_columns() if dictionary else None)
        batches = parquet.iter_batches(batch_size=chunk_rows, columns=_needed_columns())
        while True:
            started = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            if left is not None:
                batch = batch.slice(0, left)
                left -= batch.num_rows
            frame = _rename(batch.to_pandas())
            yield frame, time.perf_counter() - started
            if left == 0:
                return


def _worker(
    mode: str, data_dir: Path, chunk_rows: int | None, limit: int | None, strings: str
) -> None:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from scipy import stats
    from scipy.spatial import distance

    from pipeline.monitoring.config import DriftConfig, MonitoringConfig
    from pipeline.monitoring.drift import DriftAccumulator, detect_drift
    from pipeline.monitoring.profile import ReferenceProfile

    baseline = _rss_mb()
    chunk_rows = chunk_rows or MonitoringConfig().chunk_rows
    started = time.perf_counter()
    cpu_started = _cpu_seconds()
    profile = ReferenceProfile.from_json((data_dir / "reference_profile.json").read_text())
    config = DriftConfig()
    dictionary = strings == "dictionary"
    result: dict[str, Any] = {"mode": mode, "baseline_mb": baseline}
    read_seconds = 0.0
    if mode == "stream":
        accumulator = DriftAccumulator(profile, config)
        chunks = 0
        for frame, seconds in _batches(data_dir, chunk_rows, limit, dictionary):
            read_seconds += seconds
            accumulator.update(frame)
            chunks += 1
            del frame
        report = accumulator.result()
        result["chunks"] = chunks
        result["report"] = report.to_dict()
    elif mode == "memory":
        tables, rows = [], 0
        for path in sorted(_log_dir(data_dir).glob("part-*.parquet")):
            table = pq.read_table(
                path,
                columns=_needed_columns(),
                read_dictionary=_text_columns() if dictionary else None,
            )
            tables.append(table.slice(0, limit - rows) if limit is not None else table)
            rows += tables[-1].num_rows
            if limit is not None and rows >= limit:
                break
        frame = _rename(pa.concat_tables(tables).to_pandas())
        del tables
        read_seconds = time.perf_counter() - started
        report = detect_drift(profile, [frame], config)
        result["report"] = report.to_dict()
    else:  # raw: exact statistics on raw values, with the raw reference in memory as well
        seed = json.loads((data_dir / "complete.json").read_text())["seed"]
        reference, reference_predictions = _reference_frame(seed)
        reference["prediction"] = reference_predictions
        frames = []
        for frame, seconds in _batches(data_dir, chunk_rows, limit, dictionary):
            read_seconds += seconds
            frames.append(frame)
        current = pd.concat(frames, ignore_index=True)
        del frames
        exact: dict[str, dict[str, float]] = {}
        for name in NUMERIC:
            ref_values = reference[name].dropna().to_numpy()
            cur_values = current[name].dropna().to_numpy()
            exact[name] = {
                "wasserstein": float(
                    stats.wasserstein_distance(ref_values, cur_values) / np.std(ref_values)
                ),
            }
        for name in [*CATEGORICAL, "prediction"]:
            ref_counts = reference[name].astype(str).value_counts()
            cur_counts = current[name].astype(str).value_counts()
            labels = sorted(set(ref_counts.index) | set(cur_counts.index))
            p = ref_counts.reindex(labels, fill_value=0).to_numpy(dtype=float)
            q = cur_counts.reindex(labels, fill_value=0).to_numpy(dtype=float)
            exact[name] = {"js": float(distance.jensenshannon(p / p.sum(), q / q.sum(), base=2))}
        result["exact"] = exact
        result["rows"] = len(current)
    result["seconds"] = time.perf_counter() - started
    result["read_seconds"] = read_seconds
    result["cpu_seconds"] = _cpu_seconds() - cpu_started
    result["peak_mb"] = _rss_mb()
    result["vm_hwm_mb"] = _hwm_mb()
    result["chunk_rows"] = chunk_rows
    if "report" in result:
        result["rows"] = result["report"]["rows"]
    print(json.dumps(result))


def _measure(mode: str, args: argparse.Namespace, limit: int | None = None) -> dict[str, Any]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        mode,
        "--data-dir",
        str(args.data_dir),
        "--strings",
        args.strings,
    ]
    if args.chunk_rows is not None:
        command += ["--chunk-rows", str(args.chunk_rows)]
    if limit is not None:
        command += ["--limit", str(limit)]
    if mode == "generate":
        command += ["--rows", str(args.rows), "--file-rows", str(args.file_rows)]
        command += ["--seed", str(args.seed)]
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    finished = subprocess.run(
        command, capture_output=True, text=True, env=environment, check=False, cwd=REPO_ROOT
    )
    if finished.returncode != 0:
        sys.exit(f"the {mode} step failed:\n{finished.stderr}")
    if mode == "generate":
        return {}
    return dict(json.loads(finished.stdout.strip().splitlines()[-1]))


# --- report -------------------------------------------------------------------------------


def _max_difference(a: Any, b: Any) -> float:
    """Largest relative difference between two JSON reports (inf if their shapes differ)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return math.inf
        return max((_max_difference(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return math.inf
        return max((_max_difference(x, y) for x, y in zip(a, b, strict=True)), default=0.0)
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) / max(abs(a), abs(b), 1e-300) if a != b else 0.0
    return 0.0 if a == b else math.inf


def _row(label: str, figures: dict[str, Any]) -> str:
    rows = figures["rows"]
    return (
        f"  {label:<22} {rows:>11,} {figures['seconds']:>8.1f} {figures['read_seconds']:>8.1f} "
        f"{figures['cpu_seconds']:>8.1f} {rows / figures['seconds']:>12,.0f} "
        f"{figures['baseline_mb']:>9.0f} {figures['peak_mb']:>8.0f} "
        f"{figures['peak_mb'] - figures['baseline_mb']:>8.0f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows in the log")
    parser.add_argument(
        "--compare-rows",
        type=int,
        default=1_000_000,
        help="rows for the streaming / in-memory / raw comparison (0: skip)",
    )
    parser.add_argument(
        "--chunk-rows", type=int, help="default: monitoring.chunk_rows of MonitoringConfig"
    )
    parser.add_argument("--file-rows", type=int, default=500_000, help="rows per log file")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--strings", choices=["dictionary", "plain"], default="dictionary")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument(
        "--worker", choices=["generate", "stream", "memory", "raw"], help=argparse.SUPPRESS
    )
    parser.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "generate":
        _generate(args.data_dir, args.rows, args.file_rows, args.seed)
        return 0
    if args.worker:
        _worker(args.worker, args.data_dir, args.chunk_rows, args.limit, args.strings)
        return 0

    print(
        f"Monitor benchmark: {args.rows:,} logged rows x {len(NUMERIC) + len(CATEGORICAL)} "
        f"features (+ prediction), text columns read as {args.strings}"
    )
    print(
        f"  machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start, "
        f"Python {platform.python_version()}"
    )
    generated = not _is_cached(args.data_dir, _data_params(args.rows, args.file_rows, args.seed))
    started = time.perf_counter()
    if generated:
        _measure("generate", args)
    generation_seconds = time.perf_counter() - started
    size = _directory_bytes(_log_dir(args.data_dir))
    files = len(list(_log_dir(args.data_dir).glob("part-*.parquet")))
    print(
        f"  log: {_log_dir(args.data_dir)} ({files} files, {size / 1e9:.2f} GB, "
        + (f"generated in {generation_seconds:.0f} s)" if generated else "cached)")
    )
    figures: dict[str, Any] = {"rows": args.rows}
    figures["stream"] = _measure("stream", args)
    figures["chunk_rows"] = figures["stream"]["chunk_rows"]
    print(f"  chunk_rows: {figures['chunk_rows']:,}")
    compare = min(args.compare_rows, args.rows)
    if compare:
        figures["stream_compare"] = _measure("stream", args, compare)
        figures["memory_compare"] = _measure("memory", args, compare)
        figures["raw_compare"] = _measure("raw", args, compare)
    print(
        f"\n  {'measurement':<22} {'rows':>11} {'wall s':>8} {'read s':>8} {'cpu s':>8} "
        f"{'rows/s':>12} {'base MB':>9} {'peak MB':>8} {'+MB':>8}"
    )
    print(_row("stream (all rows)", figures["stream"]))
    if compare:
        print(_row("stream", figures["stream_compare"]))
        print(_row("in memory, one chunk", figures["memory_compare"]))
        print(_row("raw exact (scipy)", figures["raw_compare"]))
    print(
        "\n  wall s: whole measurement after the imports; read s: Parquet reading and the "
        "conversion to pandas, inside it;\n  cpu s: user+system CPU of the measuring process "
        "(well below wall s means other processes took the cores);\n  base MB: peak RSS after "
        "the imports; peak MB: peak RSS at the end; +MB: their difference."
    )

    stream = figures["stream"]
    report = stream["report"]
    drifted = set(report["drifted_columns"])
    print(
        f"\n  drift found in {', '.join(sorted(drifted)) or 'no column'} "
        f"(planted: {', '.join(sorted(DRIFTED))}); data-set drift: {report['dataset_drift']} "
        f"(share {report['drifted_share']:.2f})"
    )
    if compare:
        memory, streamed = figures["memory_compare"], figures["stream_compare"]
        difference = _max_difference(streamed["report"], memory["report"])
        speed = memory["seconds"] / streamed["seconds"]
        memory_ratio = (memory["peak_mb"] - memory["baseline_mb"]) / max(
            streamed["peak_mb"] - streamed["baseline_mb"], 1.0
        )
        print(
            f"  on {compare:,} rows, streaming vs all in memory: {speed:.2f}x the speed, "
            f"{memory_ratio:.1f}x less memory above the baseline; reports equal to a relative "
            f"{difference:.1e}"
        )
        exact = figures["raw_compare"]["exact"]
        errors = [
            abs(streamed["report"]["columns"][name]["wasserstein"] - exact[name]["wasserstein"])
            for name in NUMERIC
        ]
        js_errors = [
            abs(streamed["report"]["columns"][name]["js"] - exact[name]["js"])
            for name in [*CATEGORICAL, "prediction"]
        ]
        print(
            f"  against the exact statistics on the raw values: normalised Wasserstein within "
            f"{max(errors):.4f}, JS distance within {max(js_errors):.1e}"
        )
        figures["streaming_vs_memory_max_relative_difference"] = difference
        figures["wasserstein_max_abs_error"] = max(errors)
    seconds_met = stream["seconds"] < TARGET_SECONDS
    memory_met = stream["peak_mb"] < TARGET_PEAK_MB
    scale = "" if args.rows == 10_000_000 else f" (set for 10,000,000 rows; ran {args.rows:,})"
    print(
        f"  targets{scale}: < {TARGET_SECONDS:.0f} s: {'met' if seconds_met else 'MISSED'} "
        f"({stream['seconds']:.1f} s); < {TARGET_PEAK_MB:.0f} MB peak: "
        f"{'met' if memory_met else 'MISSED'} ({stream['peak_mb']:.0f} MB)"
    )
    if drifted != DRIFTED:
        print("  WARNING: the drifted columns are not the planted ones")
    if args.json:
        for key in ("stream", "stream_compare", "memory_compare"):
            figures.get(key, {}).pop("report", None)
        figures["drifted_columns"] = sorted(drifted)
        args.json.write_text(json.dumps(figures, indent=1))
    return 0 if drifted == DRIFTED else 1


if __name__ == "__main__":
    sys.exit(main())
