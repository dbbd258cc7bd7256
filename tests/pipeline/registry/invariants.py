"""The registry invariant, checked with plain MLflow calls, shared with the crash benchmark.

`bench/registry_faults.py` owns `violations` (the benchmark counts what it reports); the bench
directory is not a package on the test path, so it is loaded here by file.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from tests.pipeline.factories import REPO_ROOT


def _load_bench() -> ModuleType:
    name = "bench_registry_faults"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "bench" / "registry_faults.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


registry_faults = _load_bench()
violations = registry_faults.violations
