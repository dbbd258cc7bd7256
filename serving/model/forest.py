"""A random forest's probabilities without scikit-learn's per-tree costs, equal to them to the bit.

Why: ``predict_proba`` on a forest of 100 trees costs about 3 µs per tree whatever the rows
(joblib's per-tree context, the checks around each gather), and each tree's walk to its leaves
releases the GIL and takes it back: a hundred hand-overs per call between the model thread and
the event loop. A micro-batch of single-row requests is tens of rows, for which that overhead
is nearly all of the cost.

Two ways, both summing the trees' probabilities in scikit-learn's order (one tree after the
other, into float64), so the result is the same to the last bit:

- :class:`ForestWalk` walks every tree at once, one level per step, in NumPy: a handful of
  array operations per level whatever the trees, and the GIL is never let go. It is used for
  small batches (``rows * depth`` up to :data:`WALK_ROW_LEVELS`), where it is 2-8x faster.
- otherwise each tree's ``tree_.apply`` gathers its rows of ``tree_.value``; frames of
  :data:`PARALLEL_FOREST_ROWS` rows or more are split over the cores.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.pipeline import Pipeline

logger = logging.getLogger(__name__)

WALK_ROW_LEVELS = 512
"""A batch is walked level by level when its rows times the forest's depth are at most this
(64 rows of a depth-8 forest); beyond it, per-tree traversal in compiled code is faster."""
MAX_WALK_BYTES = 64 * 2**20
"""Forests whose flattened copy would take more memory than this are not walked: a node costs
33 bytes plus 8 per class (its probabilities are copied too)."""
MAX_WALK_CELLS = 2**20
"""Nor are batches whose rows x trees x classes exceed this: a walk holds two float64 arrays
of that size while it sums the trees (8 MB each at this bound)."""
PARALLEL_FOREST_ROWS = 2_000
"""Frames of at least this many rows are predicted on every core: below it, a thread's
hand-over costs more than it saves."""

_PROBE_SEED = 20261207
_PROBE_ROWS = 64


def labels_follow_proba(estimator: Any) -> bool:
    """True when ``predict`` is by definition the argmax of ``predict_proba`` (forests).

    Then one ``predict_proba`` call gives both, exactly as ``predict`` would.
    """
    final = estimator[-1] if isinstance(estimator, Pipeline) else estimator
    return (
        isinstance(final, RandomForestClassifier | ExtraTreesClassifier)
        and getattr(final, "n_outputs_", 0) == 1
    )


@dataclass(frozen=True)
class ForestWalk:
    """Every tree of ``forest`` in one set of flat arrays, indexed by a global node number.

    A leaf is its own child on both sides, so rows that reach a leaf early stay there while
    the deeper trees go on; after ``depth`` levels every row is at a leaf of every tree.
    """

    forest: Any = field(repr=False)
    roots: np.ndarray
    """Each tree's root node."""
    children: np.ndarray
    """``children[2 * node]`` is the left child, ``children[2 * node + 1]`` the right one."""
    feature: np.ndarray
    threshold: np.ndarray
    nan_right: np.ndarray
    """Where a missing value goes right (``not tree_.missing_go_to_left``)."""
    values: np.ndarray
    """Each node's class probabilities (``tree_.value[:, 0, :n_classes]``)."""
    depth: int
    columns: int
    """The number of features the forest takes."""

    def fits(self, rows: int) -> bool:
        """Whether a batch of ``rows`` rows is faster walked than traversed tree by tree,
        and small enough that the walk's temporary arrays stay small."""
        cells = rows * len(self.roots) * self.values.shape[1]
        levels = rows * max(self.depth, 1)
        return rows > 0 and levels <= WALK_ROW_LEVELS and cells <= MAX_WALK_CELLS

    def mean(self, features: np.ndarray) -> np.ndarray:
        """The mean of the trees' probabilities for ``features``, float32 as the forest's
        input check returns them (missing values allowed)."""
        flat = np.ascontiguousarray(features).ravel()
        rows, columns = features.shape
        trees = len(self.roots)
        node = np.tile(self.roots, rows)  # row by row, each row's trees in order
        first = np.repeat(np.arange(rows, dtype=np.intp) * columns, trees)
        missing = bool(np.isnan(flat).any())
        for _ in range(self.depth):
            value = flat.take(first + self.feature.take(node))
            # x <= threshold goes left, as in scikit-learn's Tree.apply; NaN compares false.
            right = value > self.threshold.take(node)
            if missing:
                right |= np.isnan(value) & self.nan_right.take(node)
            node = self.children.take(node * 2 + right)
        probabilities = self.values.take(node, axis=0).reshape(rows, trees, -1)
        # cumsum adds one tree after the other, as predict_proba does (sum() would pair them).
        total = np.cumsum(probabilities, axis=1)[:, -1, :].copy()  # C-ordered, as sklearn's
        total /= trees
        return total


def compile_walk(forest: Any) -> ForestWalk | None:
    """The :class:`ForestWalk` of a single-output forest classifier, checked equal to its
    ``predict_proba`` to the bit on probe rows around its split thresholds; None for other
    estimators, very large forests or any difference."""
    if not labels_follow_proba(forest):
        return None
    structures = [tree.tree_ for tree in forest.estimators_]
    nodes = sum(structure.node_count for structure in structures)
    size = nodes * (33 + 8 * int(forest.n_classes_))
    if size > MAX_WALK_BYTES:
        logger.info(
            "Forest walk not used: its %d nodes would take %d MB (more than %d)",
            nodes,
            size // 2**20,
            MAX_WALK_BYTES // 2**20,
        )
        return None
    try:
        walk = _flatten(forest, structures)
        reason = _difference(walk, forest)
    except Exception as exc:  # a forest this code does not foresee: scikit-learn serves it
        walk, reason = None, f"it could not be built ({type(exc).__name__}: {exc})"
    if reason or walk is None:
        logger.warning("Forest walk not used: %s; scikit-learn's traversal is used instead", reason)
        return None
    return walk


def _flatten(forest: Any, structures: list[Any]) -> ForestWalk:
    n_classes = int(forest.n_classes_)
    offsets = np.cumsum([0] + [structure.node_count for structure in structures])
    parts: dict[str, list[np.ndarray]] = {
        "children": [],
        "feature": [],
        "threshold": [],
        "nan_right": [],
        "values": [],
    }
    for structure, offset in zip(structures, offsets, strict=False):
        leaf = structure.children_left == -1
        own = np.arange(structure.node_count)
        left = np.where(leaf, own, structure.children_left) + offset
        right = np.where(leaf, own, structure.children_right) + offset
        parts["children"].append(np.stack([left, right], axis=1).ravel())
        parts["feature"].append(np.where(leaf, 0, structure.feature))
        parts["threshold"].append(np.where(leaf, np.inf, structure.threshold))
        go_left = getattr(structure, "missing_go_to_left", None)
        parts["nan_right"].append(
            np.zeros(structure.node_count, bool) if go_left is None else ~np.asarray(go_left, bool)
        )
        parts["values"].append(structure.value[:, 0, :n_classes])
    joined = {key: np.concatenate(arrays) for key, arrays in parts.items()}
    return ForestWalk(
        forest=forest,
        roots=offsets[:-1].astype(np.intp),
        children=joined["children"].astype(np.intp),
        feature=joined["feature"].astype(np.intp),
        threshold=joined["threshold"].astype(np.float64),
        nan_right=joined["nan_right"],
        values=np.ascontiguousarray(joined["values"], dtype=np.float64),
        depth=max(int(structure.max_depth) for structure in structures),
        columns=int(forest.n_features_in_),
    )


def _difference(walk: ForestWalk, forest: Any) -> str | None:
    """How the walk differs from ``forest.predict_proba`` on the probe, or None."""
    values = _probe(walk)
    gaps = _with_gaps(values)
    slices = [(values, False), (values[:1], False), (values[-1:], False)]
    for rows, missing in [*slices, (gaps, True), (gaps[-2:], True)]:
        with warnings.catch_warnings():
            # A forest fitted on a named frame warns that the probe has no column names.
            warnings.simplefilter("ignore", UserWarning)
            try:
                expected = np.asarray(forest.predict_proba(rows), dtype=np.float64)
                actual = walk.mean(forest._validate_X_predict(rows))
            except (ValueError, AttributeError, TypeError) as exc:
                # A forest that refuses missing values refuses them when serving as well.
                if missing and isinstance(exc, ValueError):
                    continue
                return f"scikit-learn fails on the probe rows ({exc})"
        if actual.shape != expected.shape or actual.tobytes() != expected.tobytes():
            return "a probability differs from scikit-learn's on the probe rows"
    return None


def _probe(walk: ForestWalk) -> np.ndarray:
    """Rows whose values sit on either side of the forest's thresholds, as float32 rounds
    them: the comparisons a walk could get wrong. Columns no split uses get random values.

    Grouped by column with one sort, so it costs the same for a wide model as a narrow one.
    """
    rng = np.random.default_rng(_PROBE_SEED)
    probe = rng.normal(size=(_PROBE_ROWS, walk.columns))
    splits = np.isfinite(walk.threshold)
    at = walk.threshold[splits].astype(np.float32)
    with np.errstate(over="ignore"):
        near = np.concatenate([at, np.nextafter(at, np.float32(np.inf))])
    columns = np.tile(walk.feature[splits], 2)
    kept = np.isfinite(near)
    order = np.argsort(columns[kept], kind="stable")
    near, columns = near[kept][order], columns[kept][order]
    used, starts, counts = np.unique(columns, return_index=True, return_counts=True)
    picks = starts[:, None] + (rng.random((used.size, _PROBE_ROWS)) * counts[:, None]).astype(
        np.intp
    )
    probe[:, used] = near[picks].T
    return probe


def _with_gaps(probe: np.ndarray) -> np.ndarray:
    """``probe`` with a missing value in a quarter of its rows and one row of nothing else."""
    rng = np.random.default_rng(_PROBE_SEED + 1)
    gaps = probe.copy()
    rows = rng.permutation(_PROBE_ROWS - 1)[: _PROBE_ROWS // 4]
    gaps[rows, rng.integers(0, probe.shape[1], rows.size)] = np.nan
    gaps[-1] = np.nan
    return gaps


def forest_proba(forest: Any, features: Any, walk: ForestWalk | None = None) -> np.ndarray:
    """``forest.predict_proba(features)``, to the bit, by ``walk`` (when it is this forest's
    and the batch is small) or tree by tree without joblib.

    Falls back to the public method if the private input check ever changes.
    """
    own = walk if walk is not None and walk.forest is forest else None
    if own is not None:
        taken = _walked_input(own, features)
        if taken is not None:
            return own.mean(taken)
    try:
        features = forest._validate_X_predict(features)
        rows = features.shape[0]
        # Missing values, when the forest takes them, are walked once the check let them by.
        if own is not None and own.fits(rows) and isinstance(features, np.ndarray):
            return own.mean(features)
        chunks = _row_chunks(rows)
        if len(chunks) == 1:
            return _tree_mean(forest, features)
        # Large frames (bulk requests): a share of the rows per core. Each row's sum still
        # runs over the trees in order, so the result is the same to the last bit; the
        # trees' traversal releases the GIL, so the threads do run at once.
        parts = _forest_pool().map(lambda part: _tree_mean(forest, features[part]), chunks)
        return np.concatenate(list(parts))
    except (AttributeError, TypeError):
        return np.asarray(forest.predict_proba(features), dtype=float)


def _walked_input(walk: ForestWalk, features: Any) -> np.ndarray | None:
    """``features`` as the forest's input check would return them, when that check would
    surely pass: a small finite float matrix of the right width. None otherwise (the check
    then runs, and raises on what it refuses).

    The check costs about 80 µs whatever the rows, more than walking a few rows.
    """
    if not (
        type(features) is np.ndarray  # not a subclass (np.matrix), which the check refuses
        and features.ndim == 2
        and features.dtype in (np.float64, np.float32)
        and features.shape[1] == walk.columns
        and walk.fits(features.shape[0])
    ):
        return None
    # The same cast as the check's (float64 to float32, round to nearest). What overflows
    # is left to the check, which refuses it (and warns as scikit-learn always has).
    with np.errstate(over="ignore"):
        taken = features.astype(np.float32)
    return taken if bool(np.isfinite(taken).all()) else None


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _row_chunks(rows: int) -> list[slice]:
    """Consecutive row ranges, one per core, for a frame of ``rows`` rows (one when small)."""
    parts = (
        min(_cores(), rows // (PARALLEL_FOREST_ROWS // 2)) if rows >= PARALLEL_FOREST_ROWS else 1
    )
    if parts <= 1:
        return [slice(0, rows)]
    bounds = np.linspace(0, rows, parts + 1).astype(int).tolist()
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]


def _forest_pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=_cores(), thread_name_prefix="forest")
        return _POOL


def _tree_mean(forest: Any, features: Any) -> np.ndarray:
    """The mean of the trees' probabilities, summed tree by tree as scikit-learn does.

    A tree's probabilities are the rows of ``tree_.value`` at the leaves the rows reach:
    what ``DecisionTreeClassifier.predict_proba`` gathers, without the checks and views it
    adds around the gather (about 8 µs a tree, against 2 µs for the walk to the leaves).
    """
    trees = forest.estimators_
    n_classes = forest.n_classes_
    total = np.zeros((features.shape[0], n_classes), dtype=np.float64)
    for tree in trees:
        structure = tree.tree_
        leaves = structure.apply(features)
        total += structure.value[:, 0, :n_classes].take(leaves, axis=0, mode="clip")
    total /= len(trees)
    return total
