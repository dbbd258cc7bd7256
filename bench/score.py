"""Batch-scoring benchmark: rows/s of the pandas and Spark engines, and the pandas engine's memory.

Run from the repository root with the project's virtualenv (`make bench-score`):

    .venv/bin/python bench/score.py                       # 1M rows, both engines, 1M vs 4M RSS
    .venv/bin/python bench/score.py --rows 200000 --memory-rows 200000,800000   # quicker
    .venv/bin/python bench/score.py --engines pandas --format parquet

What it does (issue 6, item 4):

1. Unless `--model-uri` is given, builds a throwaway MLflow store in a new temporary directory
   (never ./mlflow.db or ./mlruns) and trains the default iris config through the pipeline
   (`flow.run_all`), so the model is exactly what `make pipeline` registers: an sklearn
   Pipeline (median imputation, standard scaling, LogisticRegression) in skops format.
2. Writes `--rows` iris-like rows (the 150 iris rows resampled with Gaussian noise, seed 0, plus
   an `id` column) as CSV or Parquet.
3. Scores that file with each engine in this process and reports rows/s (rows / wall time of
   `score.run`, reading, checking, predicting and writing included). Spark is run twice: the
   first run pays for starting the local session (JVM) and its Python workers, the second
   is warm.
4. Checks that the two engines wrote identical files.
5. Peak memory of the pandas engine: for each size in `--memory-rows` a fresh Python process
   scores a file of that many rows and reports its peak RSS (VmHWM; `_peak_rss_mb` says why
   not `resource.getrusage` alone), next to a 1,000-row run (the imports and the model) and,
   for the largest size, the same rows scored naively (`pandas.read_csv` of the whole file,
   one predict call). Flat RSS from 1M to 4M rows is the point: memory is bounded by
   `--chunk-rows`, not by the file.

The machine is shared (2 cores here); the load average at start and end is printed with the
figures, which are only comparable between runs on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.csv as pacsv  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

NUMERIC = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.measure_memory:
        return _measure_memory(*args.measure_memory)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
        return _bench(args, Path(tmp))


def _bench(args: argparse.Namespace, tmp: Path) -> int:
    import mlflow

    from pipeline.scoring import score
    from pipeline.scoring.spark_engine import stop_spark

    print(f"machine: {os.cpu_count()} cores, load average {_loadavg()} (shared with others)")
    if args.model_uri:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    else:
        # A throwaway store, whatever MLFLOW_TRACKING_URI the caller (or make) exported.
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        os.environ["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_REGISTRY_URI"] = uri
    mlflow.set_tracking_uri(uri)
    model_uri = args.model_uri or _train(tmp)
    print(f"model: {model_uri}")
    source = _write_rows(tmp / f"rows_{args.rows}.{args.format}", args.rows, args.format)
    size_mb = source.stat().st_size / 1e6
    print(
        f"input: {args.rows:,} rows, {args.format}, {size_mb:.0f} MB; "
        f"chunk_rows {args.chunk_rows:,}"
    )

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    rates: dict[str, float] = {}
    outputs: dict[str, Path] = {}
    print(f"\n{'engine':<14}{'rows':>12}{'seconds':>10}{'rows/s':>12}")
    for engine in engines:
        runs = ("cold", "warm") if engine == "spark" else ("",)
        for label in runs:
            output = tmp / f"scores_{engine}{label}.parquet"
            started = time.perf_counter()
            result = score.run(
                score.ScoreRequest(
                    input_path=source,
                    output_path=output,
                    model_uri=model_uri,
                    engine=engine,
                    chunk_rows=args.chunk_rows,
                    progress=False,
                )
            )
            seconds = time.perf_counter() - started
            rate = result.rows / seconds
            rates[f"{engine} {label}".strip()] = rate
            outputs[engine] = output
            name = f"{engine} ({label})" if label else engine
            print(f"{name:<14}{result.rows:>12,}{seconds:>10.1f}{rate:>12,.0f}")
    if "spark" in engines:
        stop_spark()
    if "pandas" in rates and "spark warm" in rates:
        print(
            f"spark/pandas rows/s: {rates['spark cold'] / rates['pandas']:.2f}x with session "
            f"start, {rates['spark warm'] / rates['pandas']:.2f}x warm"
        )
    if {"pandas", "spark"} <= outputs.keys():
        print("outputs: " + _compare(outputs["pandas"], outputs["spark"]))

    if args.memory_rows:
        _memory_table(args, tmp, model_uri, uri)
    print(f"\nload average at end {_loadavg()}")
    return 0


def _memory_table(args: argparse.Namespace, tmp: Path, model_uri: str, uri: str) -> None:
    sizes = [int(s) for s in args.memory_rows.split(",") if s.strip()]
    print(f"\npandas engine peak RSS (fresh process each, chunk_rows {args.chunk_rows:,})")
    print(f"{'rows':>12}{'peak RSS MB':>14}{'seconds':>10}")
    peaks: dict[int, float] = {}
    for rows in [1_000, *sizes]:
        path = _write_rows(tmp / f"mem_{rows}.{args.format}", rows, args.format)
        figures = _child(path, tmp / f"mem_{rows}.out.parquet", model_uri, args.chunk_rows, uri)
        peaks[rows] = figures["max_rss_mb"]
        print(f"{rows:>12,}{figures['max_rss_mb']:>14.0f}{figures['seconds']:>10.1f}")
        path.with_name(f"mem_{rows}.out.parquet").unlink(missing_ok=True)
    largest = max(sizes)
    naive = _child(
        tmp / f"mem_{largest}.{args.format}",
        tmp / "naive.parquet",
        model_uri,
        0,
        uri,
    )
    print(
        f"{largest:>12,}{naive['max_rss_mb']:>14.0f}{naive['seconds']:>10.1f}"
        "  naive: whole file in one DataFrame, one predict call"
    )
    if len(sizes) >= 2:
        small, big = min(sizes), largest
        print(
            f"peak RSS {big:,} / {small:,} rows: {peaks[big] / peaks[small]:.2f}x for "
            f"{big / small:.0f}x the rows; above the 1,000-row baseline: "
            f"{peaks[small] - peaks[1_000]:.0f} MB vs {peaks[big] - peaks[1_000]:.0f} MB; "
            f"naive {naive['max_rss_mb'] / peaks[big]:.1f}x the chunked peak"
        )


def _child(source: Path, output: Path, model_uri: str, chunk_rows: int, uri: str) -> Any:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--measure-memory",
            str(source),
            str(output),
            model_uri,
            str(chunk_rows),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"memory measurement failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _measure_memory(source: str, output: str, model_uri: str, chunk_rows: str) -> int:
    """In a fresh process: score `source` and print peak RSS. chunk_rows 0: the naive way."""
    from pipeline import model_io
    from pipeline.scoring import score

    started = time.perf_counter()
    if int(chunk_rows) > 0:
        score.run(
            score.ScoreRequest(
                input_path=Path(source),
                output_path=Path(output),
                model_uri=model_uri,
                chunk_rows=int(chunk_rows),
                progress=False,
            )
        )
    else:
        import pandas as pd

        frame = pd.read_csv(source) if source.endswith(".csv") else pd.read_parquet(source)
        model = model_io.load_model(model_uri)
        frame["prediction"] = model.predict(frame[NUMERIC]).astype(str)
        for label, column in zip(
            model.classes_, model.predict_proba(frame[NUMERIC]).T, strict=True
        ):
            frame[f"proba.{label}"] = column
        frame.to_parquet(output)
    seconds = time.perf_counter() - started
    print(json.dumps({"max_rss_mb": _peak_rss_mb(), "seconds": seconds}))
    return 0


def _peak_rss_mb() -> float:
    """Peak resident memory of this process's own address space, in MB.

    Linux carries `getrusage(...).ru_maxrss` across fork and exec: a child started by a big
    parent reports at least the parent's peak (this benchmark's parent holds two scored
    files). VmHWM in /proc/self/status is the high-water mark of the current address space
    only; ru_maxrss is the fallback elsewhere.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def _train(tmp: Path) -> str:
    import yaml

    from pipeline.config import load_config
    from pipeline.steps import flow

    config = yaml.safe_load((REPO_ROOT / "configs" / "iris.yaml").read_text())
    config.update(experiment="bench-score", registered_model="bench-score")
    path = tmp / "iris.yaml"
    path.write_text(yaml.safe_dump(config))
    cwd = Path.cwd()
    os.chdir(tmp)  # MLflow's default ./mlruns artifact root is then the temporary one
    try:
        result = flow.run_all(load_config(path))
    finally:
        os.chdir(cwd)
    return f"models:/bench-score/{result.registered.version}"


def _write_rows(path: Path, rows: int, fmt: str) -> Path:
    """Iris resampled with noise, written in slices so the writer never holds it all."""
    from sklearn.datasets import load_iris

    base = load_iris().data
    rng = np.random.default_rng(0)
    schema = pa.schema([("id", pa.int64()), *[(name, pa.float64()) for name in NUMERIC]])
    step = 500_000
    writer: Any = pacsv.CSVWriter(path, schema) if fmt == "csv" else pq.ParquetWriter(path, schema)
    with writer:
        for start in range(0, rows, step):
            n = min(step, rows - start)
            values = base[rng.integers(0, len(base), n)] + rng.normal(0.0, 0.1, (n, 4))
            arrays = [pa.array(np.arange(start, start + n, dtype=np.int64))]
            arrays += [pa.array(np.round(values[:, i], 3)) for i in range(4)]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
    return path


def _compare(first: Path, second: Path) -> str:
    a, b = pq.read_table(first), pq.read_table(second)
    if a.equals(b):
        return f"identical ({a.num_rows:,} rows, {a.num_columns} columns, values bit for bit)"
    if a.schema != b.schema or a.num_rows != b.num_rows:
        return f"DIFFERENT schema or row count: {a.schema} vs {b.schema}"
    proba = [n for n in a.schema.names if n.startswith("proba.")]
    pairs = zip(a["prediction"].to_pylist(), b["prediction"].to_pylist(), strict=True)
    labels = sum(x != y for x, y in pairs)
    delta = max(
        float(np.max(np.abs(a[n].to_numpy() - b[n].to_numpy()), initial=0.0)) for n in proba
    )
    return f"labels differ in {labels} rows; max |probability difference| {delta:.3g}"


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows scored per engine")
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv")
    parser.add_argument("--engines", default="pandas,spark", help="comma-separated")
    parser.add_argument(
        "--memory-rows",
        default="1000000,4000000",
        help="file sizes (rows) for the pandas engine's peak RSS; empty to skip",
    )
    parser.add_argument("--model-uri", help="score with this model instead of training one")
    parser.add_argument("--measure-memory", nargs=4, help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    sys.exit(main())
