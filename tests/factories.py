"""Objects shared by test layers that train through the real pipeline (e2e, team)."""

from __future__ import annotations

from typing import Final

# One setosa flower as the pipeline's iris config names its columns (snake case, in cm).
IRIS_SETOSA: Final[dict[str, float]] = {
    "sepal_length_cm": 5.1,
    "sepal_width_cm": 3.5,
    "petal_length_cm": 1.4,
    "petal_width_cm": 0.2,
}
