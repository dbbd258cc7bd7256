"""Serving benchmark: our server (``python -m serving``) against ``mlflow models serve``.

Run from the repository root with the project's virtualenv:

    .venv/bin/python -m bench.serving --quick                  # ~1 minute, to check it works
    .venv/bin/python -m bench.serving --duration 15 --warmup 5 # the figures in bench/README.md
    .venv/bin/python -m bench.serving --calibrate              # how fast can the load generator go?

What it does (issue 3, item 7):

1. Builds a throwaway MLflow store in a temporary directory (never ./mlflow.db or ./mlruns),
   trains a RandomForest (100 trees) and a LogisticRegression pipeline on scikit-learn's
   bundled breast-cancer data, logs each in skops format with a signature and an input
   example, registers each as its own model and puts version 1 in Production (+ alias
   ``champion``).
2. For each model, starts our server and then MLflow's scoring server on the same registered
   version, one at a time (the machine has 2 cores), each in its own process group, and stops
   it (SIGTERM, then SIGKILL for the whole group) before the next one starts.
3. Drives each with the same closed-loop load from this process: ``--concurrency`` keep-alive
   connections, each sending one single-row request after another, first for ``--warmup``
   seconds (not counted) and then for ``--duration`` seconds. Reports requests/s
   (completions inside the window / window length), p50 and p99 latency and errors (non-2xx
   answers and exceptions).
4. Bulk: one ``--bulk-rows``-row request, sent ``--bulk-requests`` times in a row after a
   warm-up; reports rows/s.
5. Prediction log (issue 5): our server runs with its prediction log on, as it is deployed
   (``--prediction-log on``), off, or both ways on the same model and load
   (``--prediction-log both``, alternating which goes first in each round), which reports the
   throughput ratio log on / log off against the issue's limit (at most 10% slower), and
   how many rows the log wrote, dropped or lost.

Both servers are black boxes reached over HTTP on 127.0.0.1 only. The load generator is
described in bench/README.md: by default raw asyncio streams (uvloop when available) writing
pre-built HTTP/1.1 requests, because httpx's client costs several times more CPU per request
than the servers under test on a 2-core machine (``--calibrate`` measures it).

The modules, one job each: ``store`` (data, models, the throwaway store), ``servers`` (the
server processes), ``wire`` (payloads and a minimal HTTP/1.1 client), ``load`` (the
single-row load generators), ``bulk`` (the bulk phase and the sanity requests), ``machine``
(machine facts and CPU accounting), ``profiling`` (py-spy), ``calibrate`` (the generators
against a stub), ``measure`` (one server's whole run), ``report`` (tables and JSON) and
``__main__`` (arguments and the order of the runs).
"""
