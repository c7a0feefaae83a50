"""The demo's models: real scikit-learn classifiers on a data set that ships with it.

Production v1 is a logistic regression, the candidate v2 a gradient-boosted tree
ensemble; both learn handwritten digits (``load_digits``: 1,797 8x8 images, 10 classes),
so nothing is downloaded. Half the rows train, the other half become live traffic.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SEED = 7


@dataclass(frozen=True)
class DemoData:
    rows: list[list[float]]
    """Held-out feature rows, replayed as traffic."""
    labels: list[int]
    """Their true classes, posted as feedback later."""


def train(directory: Path) -> tuple[dict[str, Path], DemoData]:
    """Fit both models, pickle them under ``directory``; return their paths and the traffic."""
    from sklearn.datasets import load_digits
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, target = load_digits(return_X_y=True)
    x_train, x_live, y_train, y_live = train_test_split(
        features, target, test_size=0.5, random_state=SEED, stratify=target
    )
    models: dict[str, Any] = {
        "v1": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        # Plain gradient boosting predicts one row in about a millisecond; the
        # histogram variant spends tens of milliseconds per call on thread start-up.
        "v2": GradientBoostingClassifier(n_estimators=60, learning_rate=0.2, random_state=SEED),
    }
    paths: dict[str, Path] = {}
    for name, model in models.items():
        model.fit(x_train, y_train)
        path = directory / f"digits-{name}.pkl"
        path.write_bytes(pickle.dumps(model))
        paths[name] = path
    return paths, DemoData(x_live.tolist(), [int(label) for label in y_live])
