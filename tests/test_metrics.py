"""Evaluation: AUC, bootstrap CI, thresholds, the id join, table checks, and the stage."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from mrnet import PLANES, TASKS
from mrnet.core import stats
from mrnet.core.errors import UserError
from mrnet.core.plots import plot_roc, roc_points, roc_table, write_table
from mrnet.core.stats import (auc, binary_metrics, bootstrap_aucs, bootstrap_ci, brier,
                              expected_calibration_error, reliability, task_seed, youden_threshold)
from mrnet.core.tables import make_probs, read_probs, rows
from mrnet.evaluation.metrics import evaluate_all, evaluate_task, headline, largest_errors

PROJECT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEADER = "case_id,split,label,prob"


def _scores(rng: np.random.Generator, labels: np.ndarray, signal: float) -> np.ndarray:
    """Probabilities that separate the classes by ``signal`` logits, plus unit noise."""
    logits = signal * (2 * labels - 1) + rng.normal(0.0, 1.0, labels.size)
    return 1.0 / (1.0 + np.exp(-logits))


def _table(ids: list[str], splits: list[str], labels, probs,
           source: str = "t") -> pd.DataFrame:
    return make_probs(ids, splits, labels, probs, source=source)


def _task_tables(seed: int = 0, n_train: int = 30, n_valid: int = 24,
                 models: tuple[str, ...] = (*PLANES, "ensemble")) -> dict[str, pd.DataFrame]:
    """One task's tables: shared ids and labels, different scores per model."""
    rng = np.random.default_rng(seed)
    n = n_train + n_valid
    ids = [f"{i:04d}" for i in range(n)]
    splits = ["train"] * n_train + ["valid"] * n_valid
    labels = np.tile([0, 1], n // 2 + 1)[:n]
    return {m: _table(ids, splits, labels, _scores(rng, labels, 0.5 + 0.4 * k), source=m)
            for k, m in enumerate(models)}


def _permuted(table: pd.DataFrame, seed: int) -> pd.DataFrame:
    order = np.random.default_rng(seed).permutation(len(table))
    return table.iloc[order].reset_index(drop=True)


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
    monkeypatch.setattr(stats, "_BOOT_CHUNK_ELEMENTS", 40 * 7)
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
    assert r["operating_point"] == youden_threshold(labels[tune], probs[tune])
    assert r["operating_point"] != youden_threshold(labels[train], probs[train])
    assert r["operating_point_split"] == "tune"
    valid = np.array(splits) == "valid"
    want = binary_metrics(labels[valid], probs[valid], r["operating_point"])
    assert r["sensitivity_at_operating_point"] == want["sensitivity"]
    assert r["specificity_at_0.5"] == binary_metrics(labels[valid], probs[valid],
                                                      0.5)["specificity"]


def test_operating_point_ignores_valid_labels() -> None:
    tables = _task_tables(seed=2)
    before = evaluate_task(tables, 50, 0.95, seed=0)
    flipped = {}
    for name, t in tables.items():
        t = t.copy()
        valid = t["split"] == "valid"
        t.loc[valid, "label"] = 1 - t.loc[valid, "label"]
        flipped[name] = t
    after = evaluate_task(flipped, 50, 0.95, seed=0)
    for name in tables:
        assert after[name]["operating_point"] == before[name]["operating_point"]
        assert after[name]["auc"] == pytest.approx(1 - before[name]["auc"])


# --- the join -------------------------------------------------------------------------------

def test_evaluate_task_joins_by_case_id_not_row_order() -> None:
    tables = _task_tables()
    shuffled = dict(tables, coronal=_permuted(tables["coronal"], seed=1))
    assert evaluate_task(shuffled, 200, 0.95, seed=4) == evaluate_task(tables, 200, 0.95, seed=4)
    r = evaluate_task(tables, 200, 0.95, seed=4)
    valid = rows(tables["sagittal"], "valid")
    assert r["sagittal"]["auc"] == pytest.approx(roc_auc_score(valid["label"], valid["prob"]))
    assert r["sagittal"]["n_valid"] == 24 and r["sagittal"]["n_pos"] == 12


def test_evaluate_task_rejects_a_missing_valid_case() -> None:
    tables = _task_tables()
    ax = tables["axial"]
    tables["axial"] = ax[ax["case_id"] != "0040"]
    tables["axial"].attrs["source"] = "axial.csv"
    with pytest.raises(UserError, match=r"axial\.csv.*0040"):
        evaluate_task(tables, 50, 0.95, seed=0)
    # Whichever table comes first, the one with the hole is named.
    with pytest.raises(UserError, match=r"axial\.csv.*0040"):
        evaluate_task({"c": tables["coronal"], "a": tables["axial"]}, 50, 0.95, seed=0)


def test_evaluate_task_rejects_a_mismatched_label() -> None:
    tables = _task_tables()
    ens = tables["ensemble"].copy()
    ens.loc[ens["case_id"] == "0033", "label"] ^= 1
    ens.attrs["source"] = "ensemble-x.csv"
    tables["ensemble"] = ens
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
                if key == "operating_point_split":
                    assert value == "train"
                    continue
                assert isinstance(value, (int, float)), (task, model, key)
                assert value == round(value, 4)
            assert r["auc_ci_low"] <= r["auc"] <= r["auc_ci_high"]
    want = np.mean([evaluate_task(tables[t], 100, 0.95, task_seed(0, t))["ensemble"]["auc"]
                    for t in TASKS])
    assert out["mean_auc"]["ensemble"] == round(float(want), 4)
    json.dumps(out, allow_nan=False)


def test_evaluate_all_writes_undefined_values_as_null() -> None:
    tables = {task: _task_tables(seed=i) for i, task in enumerate(TASKS)}
    for t in tables["acl"].values():  # every valid case of acl negative
        t.loc[t["split"] == "valid", "label"] = 0
    out = evaluate_all(tables, 50, 0.95, seed=0)
    assert out["acl"]["ensemble"]["auc"] is None
    assert out["acl"]["ensemble"]["sensitivity_at_0.5"] is None
    assert out["mean_auc"]["ensemble"] is None
    assert out["abnormal"]["ensemble"]["auc"] is not None
    json.dumps(out, allow_nan=False)


# --- reading tables -------------------------------------------------------------------------

def test_read_probs_keeps_ids_as_strings(tmp_path: Path) -> None:
    path = tmp_path / "acl-axial.csv"
    _write_csv(path, [("0000", "train", 1, 0.9), ("0007", "valid", 0, 0.25),
                      ("0010", "valid", 1, 1.0)])
    t = read_probs(path)
    assert t["case_id"].tolist() == ["0000", "0007", "0010"]
    assert t["split"].tolist() == ["train", "valid", "valid"]
    assert t["label"].tolist() == [1, 0, 1]
    assert t["prob"].tolist() == [0.9, 0.25, 1.0]
    assert rows(t, "valid")["case_id"].tolist() == ["0007", "0010"]
    assert t.attrs["source"] == str(path)


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
    table = roc_table({"axial": (np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])),
                       "one-class": (np.array([1, 1]), np.array([0.2, 0.3]))})
    assert table["model"].unique().tolist() == ["axial"]  # no curve without both classes
    out = tmp_path / "roc" / "acl.csv"
    write_table(out, table)
    back = pd.read_csv(out)
    assert back.columns.tolist() == ["model", "i", "fpr", "tpr"]
    assert back["i"].tolist() == list(range(len(fpr)))
    np.testing.assert_allclose(back["fpr"], fpr, atol=1e-6)
    np.testing.assert_allclose(back["tpr"], tpr, atol=1e-6)


# --- calibration, errors, headline ----------------------------------------------------------

def test_reliability_ece_and_brier_by_hand() -> None:
    labels = np.array([0, 1, 0, 1, 1])
    probs = np.array([0.05, 0.08, 0.5, 0.95, 1.0])
    curve = reliability(labels, probs, n_bins=10)
    # bins: 0.05 and 0.08 -> bin 0; 0.5 -> bin 4 (right-closed); 0.95 and 1.0 -> bin 9
    assert curve["bin"].tolist() == [0, 4, 9]
    assert curve["n"].tolist() == [2, 1, 2]
    np.testing.assert_allclose(curve["predicted"], [0.065, 0.5, 0.975])
    np.testing.assert_allclose(curve["observed"], [0.5, 0.0, 1.0])
    want_ece = (2 * abs(0.5 - 0.065) + 1 * 0.5 + 2 * abs(1.0 - 0.975)) / 5
    assert expected_calibration_error(labels, probs, 10) == pytest.approx(want_ece)
    want_brier = (0.05**2 + 0.92**2 + 0.5**2 + 0.05**2 + 0.0) / 5
    assert brier(labels, probs) == pytest.approx(want_brier)


def test_largest_errors_on_a_constructed_table() -> None:
    ids = [f"{i:04d}" for i in range(10)]
    splits = ["train"] * 2 + ["valid"] * 8
    labels = [0, 1, 0, 0, 0, 1, 1, 1, 0, 1]
    probs = [0.1, 0.9, 0.7, 0.2, 0.95, 0.1, 0.4, 0.8, 0.61, 0.59]
    table = _table(ids, splits, labels, probs)
    errors = largest_errors(table, threshold=0.6, n=2)
    # false positives (label 0, prob >= 0.6): 0004 (0.95), 0002 (0.7), 0008 (0.61)
    # false negatives (label 1, prob < 0.6): 0005 (0.1), 0006 (0.4), 0009 (0.59)
    assert errors["case_id"].tolist() == ["0004", "0002", "0005", "0006"]
    assert errors["error"].tolist() == ["false positive"] * 2 + ["false negative"] * 2
    assert errors["label"].tolist() == [0, 0, 1, 1]
    assert "0001" not in errors["case_id"].tolist()  # train rows are never listed
    assert largest_errors(table, float("nan"), 2).empty


def test_paired_difference_to_the_ensemble() -> None:
    tables = _task_tables(seed=4)
    r = evaluate_task(tables, 300, 0.95, seed=1)
    assert "auc_minus_ensemble" not in r["ensemble"]
    for plane in PLANES:
        d = r[plane]
        assert d["auc_minus_ensemble"] == pytest.approx(d["auc"] - r["ensemble"]["auc"])
        assert d["auc_minus_ensemble_ci_low"] <= d["auc_minus_ensemble"] <= \
            d["auc_minus_ensemble_ci_high"]
    # A model identical to the ensemble differs by exactly 0 on every paired resample.
    same = dict(tables, axial=tables["ensemble"].copy())
    d = evaluate_task(same, 300, 0.95, seed=1)["axial"]
    assert d["auc_minus_ensemble_ci_low"] == d["auc_minus_ensemble_ci_high"] == 0.0


def test_headline_takes_the_report_numbers() -> None:
    tables = {task: _task_tables(seed=i, models=(*PLANES, "ensemble", "multitask"))
              for i, task in enumerate(TASKS)}
    report = evaluate_all(tables, 100, 0.95, seed=0)
    head = headline(report)
    assert set(head) == {*TASKS, "mean"}
    for task in TASKS:
        ens = report[task]["ensemble"]
        assert head[task] == {
            "auc": ens["auc"], "auc_ci_low": ens["auc_ci_low"], "auc_ci_high": ens["auc_ci_high"],
            "multitask_auc": report[task]["multitask"]["auc"],
            "operating_point": ens["operating_point"],
            "sensitivity_at_operating_point": ens["sensitivity_at_operating_point"],
            "specificity_at_operating_point": ens["specificity_at_operating_point"],
            "brier": ens["brier"], "ece": ens["ece"]}
    assert head["mean"] == {"auc": report["mean_auc"]["ensemble"],
                            "multitask_auc": report["mean_auc"]["multitask"]}
    without = headline(evaluate_all({t: {m: v for m, v in tables[t].items() if m != "multitask"}
                                     for t in TASKS}, 100, 0.95, seed=0))
    assert "multitask_auc" not in without["acl"] and "multitask_auc" not in without["mean"]


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
    # What the model card reads: the validate stage's report and the ensembles' files.
    split_report = {t: {"positives": 15, "prevalence": 0.5} for t in TASKS}
    (workdir / "reports").mkdir(exist_ok=True)
    (workdir / "reports" / "dataset.json").write_text(json.dumps({
        "train": {"exams": 30, **split_report}, "valid": {"exams": 20, **split_report},
        "fingerprint": "ab" * 32, "synthetic": True}))
    (workdir / "models").mkdir(exist_ok=True)
    for task in TASKS:
        (workdir / "models" / f"ensemble-{task}.json").write_text(json.dumps({
            "fit_split": "train", "fit_prevalence": 0.5, "target_prevalence": None,
            "provenance": {"data_root": "data/x", "git_commit": "c0ffee", "synthetic": True,
                           "torch_version": "2"}}))
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
    report = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    models = {*PLANES, "ensemble"}
    assert set(report["mean_auc"]) == models
    for task in TASKS:
        assert set(report[task]) == models
        head = json.loads((tmp_path / "metrics" / f"{task}.json").read_text())
        assert head["auc"] == report[task]["ensemble"]["auc"]
        assert head["sensitivity_at_operating_point"] == \
            report[task]["ensemble"]["sensitivity_at_operating_point"]
        for kind, cols in (("roc", ["model", "i", "fpr", "tpr"]),
                           ("pr", ["model", "i", "recall", "precision"]),
                           ("calibration", ["model", "i", "predicted", "observed", "n"])):
            curve = pd.read_csv(tmp_path / "plots" / kind / f"{task}.csv")
            assert curve.columns.tolist() == cols
            assert set(curve["model"]) == models
        png = tmp_path / "plots" / f"roc-{task}.png"
        assert png.stat().st_size > 1000 and png.read_bytes()[:8] == PNG_MAGIC
    mean = json.loads((tmp_path / "metrics" / "mean.json").read_text())
    assert mean == {"auc": report["mean_auc"]["ensemble"]}
    errors = json.loads((tmp_path / "reports" / "errors.json").read_text())
    page = (tmp_path / "reports" / "errors.md").read_text()
    for task in TASKS:
        assert 0 < len(errors[task]) <= 4  # n_errors 2 of each kind in params.yaml
        for row in errors[task]:
            assert f"[{row['case_id']}](../plots/viewer/{row['case_id']}.html)" in page
    assert "| ensemble |" in (tmp_path / "reports" / "metrics.md").read_text()
    card = (tmp_path / "reports" / "model-card.md").read_text()
    assert "Not for diagnosis" in card and "trained on synthetic knee phantoms" in card
    for task in TASKS:
        r = report[task]["ensemble"]
        assert (f"| {task} | {r['auc']:.3f} [{r['auc_ci_low']:.3f}, {r['auc_ci_high']:.3f}] |"
                in card), task
        sens = (f"{r['sensitivity_at_operating_point']:.3f} "
                f"[{r['sensitivity_at_operating_point_ci_low']:.3f}, "
                f"{r['sensitivity_at_operating_point_ci_high']:.3f}]")
        assert sens in card and f"{r['operating_point']:.4f} (train)" in card
        assert f"| {r['brier']:.3f} | {r['ece']:.3f} |" in card
    assert "valid headline" in proc.stderr  # the results table is logged

    # A corrupted input: one error line naming the file; nothing written is touched. The
    # inode shows a rewrite even with equal bytes (atomic writes replace the file).
    def snapshot() -> dict[Path, tuple[bytes, int]]:
        paths = [*(tmp_path / "metrics").rglob("*.*"), *(tmp_path / "reports").rglob("*.md"),
                 *(tmp_path / "reports").rglob("metrics.json"),
                 *(tmp_path / "reports").rglob("errors.json"), *(tmp_path / "plots").rglob("*.*")]
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


def test_stage_picks_up_an_extra_model_and_learning_curves(tmp_path: Path) -> None:
    shutil.copy(PROJECT / "params.yaml", tmp_path / "params.yaml")
    _write_inputs(tmp_path, extra=("multitask",))
    for name, folder in (("acl-sagittal", tmp_path / "dvclive" / "acl-sagittal"),
                         ("multitask", tmp_path / "models" / "multitask" / "live")):
        val = folder / "plots" / "metrics" / "val"
        val.mkdir(parents=True)
        (val / "auc.tsv").write_text("step\tauc\n0\t0.6\n1\t0.7\n")
    proc = _run_stage(tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert "multitask" in report["mean_auc"]
    for task in TASKS:
        head = json.loads((tmp_path / "metrics" / f"{task}.json").read_text())
        assert head["multitask_auc"] == report[task]["multitask"]["auc"]
        assert "multitask" in set(pd.read_csv(tmp_path / "plots" / "roc" / f"{task}.csv")["model"])
    curves = pd.read_csv(tmp_path / "plots" / "learning" / "val_auc.csv")
    assert curves.to_dict("list") == {"model": ["acl-sagittal"] * 2 + ["multitask"] * 2,
                                      "i": [0, 1, 0, 1], "step": [0, 1, 0, 1],
                                      "value": [0.6, 0.7, 0.6, 0.7]}


def test_wilson_interval_by_hand() -> None:
    from mrnet.core.stats import wilson_interval

    # 8 of 10 at 95%: z = 1.96, centre (0.8 + z²/20) / (1 + z²/10), half-width as below.
    z = 1.959963984540054
    centre = (0.8 + z * z / 20) / (1 + z * z / 10)
    half = z * np.sqrt(0.8 * 0.2 / 10 + z * z / 400) / (1 + z * z / 10)
    assert wilson_interval(8, 10, 0.95) == pytest.approx((centre - half, centre + half))
    low, high = wilson_interval(0, 5, 0.95)
    assert low == 0.0 and 0.4 < high < 0.5
    assert all(np.isnan(v) for v in wilson_interval(0, 0, 0.95))
