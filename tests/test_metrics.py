"""Evaluation: AUC, bootstrap CI, thresholds, the id join, table checks, and the stage."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mrnet import PLANES, TASKS
from mrnet import metrics as M
from mrnet.errors import UserError
from mrnet.probs import ProbTable, read_probs
from mrnet.metrics import (auc, binary_metrics, bootstrap_aucs, bootstrap_ci,
                           evaluate_all, evaluate_task, youden_threshold)
from mrnet.plots import plot_roc, roc_points, write_roc_csv

PROJECT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEADER = "case_id,split,label,prob"


def _scores(rng: np.random.Generator, labels: np.ndarray, signal: float) -> np.ndarray:
    """Probabilities that separate the classes by ``signal`` logits, plus unit noise."""
    logits = signal * (2 * labels - 1) + rng.normal(0.0, 1.0, labels.size)
    return 1.0 / (1.0 + np.exp(-logits))


def _table(ids: list[str], splits: list[str], labels, probs, source: str = "t") -> ProbTable:
    return ProbTable.from_rows(source, ids, splits, labels, probs)


def _task_tables(seed: int = 0, n_train: int = 30, n_valid: int = 24,
                 models: tuple[str, ...] = (*PLANES, "ensemble")) -> dict[str, ProbTable]:
    """One task's tables: shared ids and labels, different scores per model."""
    rng = np.random.default_rng(seed)
    n = n_train + n_valid
    ids = [f"{i:04d}" for i in range(n)]
    splits = ["train"] * n_train + ["valid"] * n_valid
    labels = np.tile([0, 1], n // 2 + 1)[:n]
    return {m: _table(ids, splits, labels, _scores(rng, labels, 0.5 + 0.4 * k), source=m)
            for k, m in enumerate(models)}


def _permuted(table: ProbTable, seed: int) -> ProbTable:
    order = np.random.default_rng(seed).permutation(len(table))
    return ProbTable(table.source, table.case_id[order], table.split[order],
                     table.label[order], table.prob[order])


def _write_csv(path: Path, rows: list[tuple[str, str, int, float]],
               header: str = HEADER) -> None:
    lines = [header] + [f"{c},{s},{y},{p:.6f}" for c, s, y, p in rows]
    path.write_text("\n".join(lines) + "\n")


# --- AUC ------------------------------------------------------------------------------------

def test_auc_matches_hand_computation_and_sklearn() -> None:
    labels, probs = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    # 4 (pos, neg) pairs; 0.35 loses to 0.4, the other 3 are won: 3/4.
    assert auc(labels, probs) == pytest.approx(0.75)
    assert auc(labels, probs) == pytest.approx(roc_auc_score(labels, probs))
    assert auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts half


def test_auc_is_nan_with_one_class() -> None:
    assert np.isnan(auc([1, 1, 1], [0.2, 0.5, 0.9]))
    assert np.isnan(auc([], []))


# --- bootstrap ------------------------------------------------------------------------------

def test_bootstrap_aucs_equal_sklearn_on_the_same_resamples() -> None:
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 9)
    probs = np.round(rng.random(9), 1)  # rounding makes ties
    got = bootstrap_aucs(labels, probs, 300, seed=11)
    idx = np.random.default_rng(11).integers(0, 9, size=(300, 9))
    want = np.array([roc_auc_score(labels[i], probs[i]) if labels[i].min() < labels[i].max()
                     else np.nan for i in idx])
    assert np.isnan(want).any(), "the example should contain single-class resamples"
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], atol=1e-12)


def test_bootstrap_chunks_do_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 40)
    probs = rng.random(40)
    whole = bootstrap_aucs(labels, probs, 100, seed=3)
    monkeypatch.setattr(M, "_BOOT_CHUNK_ELEMENTS", 40 * 7)
    np.testing.assert_array_equal(bootstrap_aucs(labels, probs, 100, seed=3), whole)


def test_bootstrap_ci_contains_estimate_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 120)
    probs = _scores(rng, labels, 1.0)
    state = np.random.get_state()
    lo, hi = bootstrap_ci(labels, probs, 1000, 0.95, seed=7)
    assert lo < auc(labels, probs) < hi
    assert (lo, hi) == bootstrap_ci(labels, probs, 1000, 0.95, seed=7)
    assert (lo, hi) != bootstrap_ci(labels, probs, 1000, 0.95, seed=8)
    lo90, hi90 = bootstrap_ci(labels, probs, 1000, 0.90, seed=7)
    assert lo <= lo90 < hi90 <= hi
    new_state = np.random.get_state()
    assert new_state[0] == state[0]
    np.testing.assert_array_equal(new_state[1], state[1])  # the global RNG is untouched


def test_bootstrap_ci_narrows_with_more_cases() -> None:
    rng = np.random.default_rng(1)
    widths = {}
    for n in (50, 2000):
        labels = rng.integers(0, 2, n)
        lo, hi = bootstrap_ci(labels, _scores(rng, labels, 1.0), 500, 0.95, seed=0)
        widths[n] = hi - lo
    assert widths[2000] < widths[50] / 3  # ~ sqrt(40) ≈ 6× narrower in theory


def test_bootstrap_is_fast() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 120)
    probs = rng.random(120)
    start = time.perf_counter()
    bootstrap_ci(labels, probs, 1000, 0.95, seed=0)
    assert time.perf_counter() - start < 0.5


def test_single_class_resamples_are_skipped_and_counted() -> None:
    # One positive among 4 cases: about (3/4)^4 ≈ 32% of resamples have no positive.
    table = _table(["0", "1", "2", "3", "4"], ["train", "valid", "valid", "valid", "valid"],
                   [1, 0, 0, 1, 0], [0.9, 0.1, 0.2, 0.8, 0.3])
    r = evaluate_task({"m": table}, 200, 0.95, seed=0)["m"]
    assert 30 < r["boot_skipped"] < 100
    assert r["auc"] == 1.0 and r["auc_ci_low"] == 1.0 and r["auc_ci_high"] == 1.0


# --- thresholds -----------------------------------------------------------------------------

def test_youden_threshold_separates_a_separable_example() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([0.05, 0.3, 0.42, 0.55, 0.6, 0.97])
    t = youden_threshold(labels, probs)
    assert np.isfinite(t)
    assert np.all(probs[labels == 1] >= t) and np.all(probs[labels == 0] < t)
    assert binary_metrics(labels, probs, t) == {"sensitivity": 1.0, "specificity": 1.0,
                                                "accuracy": 1.0}
    assert np.isnan(youden_threshold([0, 0], [0.1, 0.2]))


def test_binary_metrics_hand_example() -> None:
    labels = [0, 0, 1, 1, 1]
    probs = [0.2, 0.6, 0.5, 0.4, 0.9]
    # At 0.5 (>= is positive): predictions 0,1,1,0,1 -> TP 2 of 3, TN 1 of 2, 3 of 5 right.
    got = binary_metrics(labels, probs, 0.5)
    assert got == pytest.approx({"sensitivity": 2 / 3, "specificity": 0.5, "accuracy": 0.6})
    assert np.isnan(binary_metrics([0, 0], [0.1, 0.9], 0.5)["sensitivity"])
    assert all(np.isnan(v) for v in binary_metrics(labels, probs, float("nan")).values())


def test_youden_threshold_comes_from_tune_rows_when_present() -> None:
    rng = np.random.default_rng(3)
    ids = [f"{i:04d}" for i in range(90)]
    splits = ["train"] * 30 + ["tune"] * 30 + ["valid"] * 30
    labels = np.tile([0, 1], 45)
    probs = _scores(rng, labels, 1.0)
    table = _table(ids, splits, labels, probs)
    tune = np.array(splits) == "tune"
    train = np.array(splits) == "train"
    r = evaluate_task({"m": table}, 50, 0.95, seed=0)["m"]
    assert r["youden_threshold"] == youden_threshold(labels[tune], probs[tune])
    assert r["youden_threshold"] != youden_threshold(labels[train], probs[train])
    valid = np.array(splits) == "valid"
    want = binary_metrics(labels[valid], probs[valid], r["youden_threshold"])
    assert r["youden_sensitivity"] == want["sensitivity"]


# --- the join -------------------------------------------------------------------------------

def test_evaluate_task_joins_by_case_id_not_row_order() -> None:
    tables = _task_tables()
    shuffled = dict(tables, coronal=_permuted(tables["coronal"], seed=1))
    assert evaluate_task(shuffled, 200, 0.95, seed=4) == evaluate_task(tables, 200, 0.95, seed=4)
    r = evaluate_task(tables, 200, 0.95, seed=4)
    _, labels, probs = tables["sagittal"].select("valid")
    assert r["sagittal"]["auc"] == pytest.approx(roc_auc_score(labels, probs))
    assert r["sagittal"]["n_valid"] == 24 and r["sagittal"]["n_pos"] == 12


def test_evaluate_task_rejects_a_missing_valid_case() -> None:
    tables = _task_tables()
    ax = tables["axial"]
    keep = ax.case_id != "0040"
    tables["axial"] = ProbTable("axial.csv", ax.case_id[keep], ax.split[keep],
                                ax.label[keep], ax.prob[keep])
    with pytest.raises(UserError, match=r"axial\.csv.*0040"):
        evaluate_task(tables, 50, 0.95, seed=0)
    # Whichever table comes first, the one with the hole is named.
    with pytest.raises(UserError, match=r"axial\.csv.*0040"):
        evaluate_task({"c": tables["coronal"], "a": tables["axial"]}, 50, 0.95, seed=0)


def test_evaluate_task_rejects_a_mismatched_label() -> None:
    tables = _task_tables()
    ens = tables["ensemble"]
    label = ens.label.copy()
    label[ens.case_id == "0033"] ^= 1
    tables["ensemble"] = ProbTable("ensemble-x.csv", ens.case_id, ens.split, label, ens.prob)
    with pytest.raises(UserError, match=r"ensemble-x\.csv.*0033"):
        evaluate_task(tables, 50, 0.95, seed=0)


def test_evaluate_all_layout_rounding_and_means() -> None:
    tables = {task: _task_tables(seed=i) for i, task in enumerate(TASKS)}
    out = evaluate_all(tables, 100, 0.95, seed=0)
    assert set(out) == {"mean_auc", *TASKS}
    assert set(out["mean_auc"]) == {*PLANES, "ensemble"}
    for task in TASKS:
        for model, r in out[task].items():
            for key, value in r.items():
                assert isinstance(value, (int, float)), (task, model, key)
                assert value == round(value, 4)
            assert r["auc_ci_low"] <= r["auc"] <= r["auc_ci_high"]
    want = np.mean([evaluate_task(tables[t], 100, 0.95, M.task_seed(0, t))["ensemble"]["auc"]
                    for t in TASKS])
    assert out["mean_auc"]["ensemble"] == round(float(want), 4)
    json.dumps(out, allow_nan=False)


def test_evaluate_all_writes_undefined_values_as_null() -> None:
    tables = {task: _task_tables(seed=i) for i, task in enumerate(TASKS)}
    for name, t in tables["acl"].items():  # every valid case of acl negative
        tables["acl"][name] = ProbTable(t.source, t.case_id, t.split,
                                        np.where(t.split == "valid", 0, t.label), t.prob)
    out = evaluate_all(tables, 50, 0.95, seed=0)
    assert out["acl"]["ensemble"]["auc"] is None
    assert out["acl"]["ensemble"]["sensitivity"] is None
    assert out["mean_auc"]["ensemble"] is None
    assert out["abnormal"]["ensemble"]["auc"] is not None
    json.dumps(out, allow_nan=False)


# --- reading tables -------------------------------------------------------------------------

def test_read_probs_keeps_ids_as_strings(tmp_path: Path) -> None:
    path = tmp_path / "acl-axial.csv"
    _write_csv(path, [("0000", "train", 1, 0.9), ("0007", "valid", 0, 0.25),
                      ("0010", "valid", 1, 1.0)])
    t = read_probs(path)
    assert t.case_id.tolist() == ["0000", "0007", "0010"]
    assert t.split.tolist() == ["train", "valid", "valid"]
    assert t.label.tolist() == [1, 0, 1]
    assert t.prob.tolist() == [0.9, 0.25, 1.0]
    ids, labels, probs = t.select("valid")
    assert ids.tolist() == ["0007", "0010"]


@pytest.mark.parametrize("header, row, match", [
    ("case_id,label,prob", None, r"line 1: expected header"),
    (HEADER, "0003,valid,2,0.5", r"line 3: case 0003: label must be 0 or 1"),
    (HEADER, "0003,valid,1,1.5", r"line 3: case 0003: prob must be .* in \[0, 1\]"),
    (HEADER, "0003,valid,1,nan", r"line 3: case 0003: prob must be"),
    (HEADER, "0003,valid,1,high", r"line 3: case 0003: prob is not a number"),
    (HEADER, "0003,test,1,0.5", r"line 3: case 0003: split must be one of"),
    (HEADER, "0003,valid,1", r"line 3: expected 4 fields"),
    (HEADER, "0001,valid,1,0.5", r"line 3: case 0001 .* repeated \(line 2\)"),
    (HEADER, "0001,train,1,0.5", r"line 3: case 0001 .* also in split 'valid'"),
])
def test_read_probs_rejects_bad_tables(tmp_path: Path, header: str, row: str | None,
                                       match: str) -> None:
    path = tmp_path / "meniscus-sagittal.csv"
    lines = [header, "0001,valid,0,0.2"] + ([row] if row else [])
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=rf"meniscus-sagittal\.csv: {match}"):
        read_probs(path)


def test_read_probs_requires_the_file_and_valid_rows(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nope\.csv: probability table not found"):
        read_probs(tmp_path / "nope.csv")
    path = tmp_path / "train-only.csv"
    _write_csv(path, [("0000", "train", 1, 0.9)])
    with pytest.raises(UserError, match=r"train-only\.csv: no rows with split 'valid'"):
        read_probs(path)


# --- plots ----------------------------------------------------------------------------------

def test_roc_points_plot_and_csv(tmp_path: Path) -> None:
    fpr, tpr = roc_points([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    with pytest.raises(ValueError, match="both classes"):
        roc_points([1, 1], [0.2, 0.3])
    png = tmp_path / "roc-acl.png"
    plot_roc("acl", {"axial": (fpr, tpr, 0.75), "ensemble": (fpr, tpr, float("nan"))}, png)
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in tmp_path.iterdir()] == ["roc-acl.png"]  # no temp file left
    out = tmp_path / "roc" / "acl" / "axial.csv"
    write_roc_csv(out, fpr, tpr)
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["fpr"]) for r in rows] == pytest.approx(fpr.tolist(), abs=1e-6)
    assert [float(r["tpr"]) for r in rows] == pytest.approx(tpr.tolist(), abs=1e-6)


# --- the stage end to end -------------------------------------------------------------------

def _write_inputs(workdir: Path, extra: tuple[str, ...] = ()) -> Path:
    """Hand-made probability tables for every task and model, rows in shuffled order."""
    probs_dir = workdir / "data" / "probs"
    probs_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ids = [f"{i:04d}" for i in range(50)]
    splits = ["train"] * 30 + ["valid"] * 20
    for task in TASKS:
        labels = np.tile([0, 1], 25)
        names = [(probs_dir, f"{task}-{p}") for p in PLANES] + [(probs_dir, f"ensemble-{task}")]
        # extra models live in their own output folder (params: multitask.out)
        names += [(workdir / "models" / e, f"{e}-{task}") for e in extra]
        for k, (folder, name) in enumerate(names):
            probs = _scores(rng, labels, 0.3 + 0.3 * k)
            order = rng.permutation(50)
            folder.mkdir(parents=True, exist_ok=True)
            _write_csv(folder / f"{name}.csv",
                       [(ids[i], splits[i], labels[i], probs[i]) for i in order])
    return probs_dir


def _run_stage(workdir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    return subprocess.run([sys.executable, "-m", "stages.evaluate"], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=120)


def test_stage_end_to_end(tmp_path: Path) -> None:
    shutil.copy(PROJECT / "params.yaml", tmp_path / "params.yaml")
    probs_dir = _write_inputs(tmp_path)
    proc = _run_stage(tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics_path = tmp_path / "metrics" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    models = {*PLANES, "ensemble"}
    assert set(metrics["mean_auc"]) == models
    for task in TASKS:
        assert set(metrics[task]) == models
        for model in models:
            assert 0.0 <= metrics[task][model]["auc"] <= 1.0
            rows = (tmp_path / "plots" / "roc" / task / f"{model}.csv").read_text().splitlines()
            assert rows[0] == "fpr,tpr" and rows[1] == "0,0" and rows[-1] == "1,1"
        png = tmp_path / "plots" / f"roc-{task}.png"
        assert png.stat().st_size > 1000 and png.read_bytes()[:8] == PNG_MAGIC
    assert "valid AUC" in proc.stderr  # the results table is logged

    # A corrupted input: one error line naming the file; nothing written is touched. The
    # inode shows a rewrite even with equal bytes (atomic writes replace the file).
    def snapshot() -> dict[Path, tuple[bytes, int]]:
        paths = [metrics_path, *(tmp_path / "plots").rglob("*.*")]
        return {p: (p.read_bytes(), p.stat().st_ino) for p in paths}

    before = snapshot()
    bad = probs_dir / "meniscus-coronal.csv"
    bad.write_text(bad.read_text().replace(",valid,1,", ",valid,2,", 1))
    proc = _run_stage(tmp_path)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "meniscus-coronal.csv" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot() == before


def test_stage_picks_up_an_extra_model(tmp_path: Path) -> None:
    shutil.copy(PROJECT / "params.yaml", tmp_path / "params.yaml")
    _write_inputs(tmp_path, extra=("multitask",))
    proc = _run_stage(tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "metrics" / "metrics.json").read_text())
    assert "multitask" in metrics["mean_auc"]
    for task in TASKS:
        assert 0.0 <= metrics[task]["multitask"]["auc"] <= 1.0
        assert (tmp_path / "plots" / "roc" / task / "multitask.csv").is_file()
