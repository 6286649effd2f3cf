"""The demo as a fresh clone runs it, at its own params.yaml: every model must learn.

A training bug that stops learning (a model stuck at the constant-output loss) still gives
valid AUCs of 0.6-0.7, picked out of noise by epoch selection; this test looks at what each
of the nine CNNs and the multitask network did on its own train exams instead
(:mod:`mrnet.evaluation.learning`). It trains the real demo, so it costs one demo run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e import copy_pipeline, init_repo, run

from mrnet import PLANES, TASKS
from mrnet.evaluation.learning import learning_table

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The MRNet pipeline at the committed params, reproduced in a fresh repository."""
    repo = tmp_path_factory.mktemp("demo")
    copy_pipeline(repo)
    init_repo(repo)
    run(repo, "dvc", "repro")
    return repo


def test_every_demo_model_learns(demo: Path) -> None:
    rows = learning_table(demo / "data" / "probs", demo / "models", demo / "models" / "multitask")
    assert [r.model for r in rows] == [f"{t}-{p}" for t in TASKS for p in PLANES] + [
        f"multitask-{t}" for t in TASKS]
    misses = {r.model: r.misses() for r in rows if r.misses()}
    assert not misses, "models of the demo that did not learn: " + "; ".join(
        f"{m}: {', '.join(why)}" for m, why in misses.items())
