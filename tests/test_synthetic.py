"""Synthetic knee phantoms: layout contract, determinism, label structure and no global leak."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mrnet import PLANES, SPLITS, TASKS
from mrnet.config import SynthesizeConfig
from mrnet.core.provenance import is_synthetic
from mrnet.data.reader import list_exams, read_labels
from mrnet.data.synthetic import PREVALENCE, draw_labels, generate, render_exam

PROJECT = Path(__file__).resolve().parents[1]

SMALL = SynthesizeConfig(seed=3, n_train=8, n_valid=6, image_size=32, slices_min=3, slices_max=7)

# Enough exams for a stable AUC (sd ~0.04 on 200 valid exams), small images for speed. The
# anatomy and the lesions scale with the field of view, so the global statistics behave as at
# the 64 px default.
LEAK = SynthesizeConfig(seed=11, n_train=300, n_valid=200, image_size=32, slices_min=10,
                        slices_max=20)
LEAK_MAX_AUC = 0.65


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("small") / "MRNet-v1.0"
    generate(root, SMALL)
    return root


def _p99(v: np.ndarray) -> float:
    return float(np.percentile(v, 99))


# Per-series statistics: the baseline that must stay near chance, and the same plus the bright
# tail of the histogram (which a big bright lesion would shift if nothing else did).
STATS = {"mean-std-slices": (np.mean, np.std, len),
         "with-bright-tail": (np.mean, np.std, len, np.median, _p99, np.max)}


@pytest.fixture(scope="module")
def leak_features(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, tuple]]:
    """{stats name: {split: (per-exam statistics of each plane, {task: labels})}}."""
    root = tmp_path_factory.mktemp("leak") / "MRNet-v1.0"
    generate(root, LEAK)
    out: dict[str, dict[str, tuple]] = {name: {} for name in STATS}
    for split in SPLITS:
        exams = list_exams(root, split)
        vols = [[np.load(e.paths[p]).astype(np.float32) for p in PLANES] for e in exams]
        y = {t: np.array([e.labels[t] for e in exams]) for t in TASKS}
        for name, funcs in STATS.items():
            x = np.array([[f(v) for v in exam for f in funcs] for exam in vols])
            out[name][split] = (x, y)
    return out


def _global_stat_auc(features: dict[str, tuple], task: str) -> float:
    """Valid AUC of a logistic regression on global statistics, fit on train."""
    (xt, yt), (xv, yv) = features["train"], features["valid"]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(xt, yt[task])
    return float(roc_auc_score(yv[task], model.predict_proba(xv)[:, 1]))


# ----------------------------------------------------------------------------- layout


def test_layout_and_csvs(small: Path) -> None:
    assert sorted(p.name for p in small.iterdir()) == sorted(
        list(SPLITS) + [f"{s}-{t}.csv" for s in SPLITS for t in TASKS]
        + ["SYNTHETIC-PHANTOMS.txt"])  # the mark that models' provenance reads
    assert is_synthetic(small) and not is_synthetic(small / "train")
    expected = {"train": [f"{i:04d}" for i in range(8)],
                "valid": [f"{i:04d}" for i in range(1130, 1136)]}
    for split in SPLITS:
        assert sorted(p.name for p in (small / split).iterdir()) == sorted(PLANES)
        for plane in PLANES:
            names = sorted(p.name for p in (small / split / plane).iterdir())
            assert names == [f"{cid}.npy" for cid in expected[split]]
        for task in TASKS:
            text = (small / f"{split}-{task}.csv").read_text()
            lines = text.splitlines()
            assert text.endswith("\n")
            assert [ln.split(",")[0] for ln in lines] == expected[split]  # no header, sorted
            assert all(ln.split(",")[1] in ("0", "1") and ln.count(",") == 1 for ln in lines)
            assert list(read_labels(small / f"{split}-{task}.csv").index) == expected[split]


def test_volumes_match_contract(small: Path) -> None:
    counts = []
    for split in SPLITS:
        for exam in list_exams(small, split):
            per_plane = []
            for plane in PLANES:
                vol = np.load(exam.paths[plane], allow_pickle=False)
                assert vol.dtype == np.uint8 and vol.ndim == 3
                assert vol.shape[1:] == (32, 32)
                assert SMALL.slices_min <= vol.shape[0] <= SMALL.slices_max
                assert vol.std() > 5  # an image, not a constant
                per_plane.append(vol.shape[0])
            counts.append(per_plane)
    counts = np.array(counts)
    assert len(np.unique(counts)) > 2
    assert (counts.min(axis=1) != counts.max(axis=1)).any()  # planes of one exam differ
    assert (counts.min(axis=0) != counts.max(axis=0)).all()  # exams differ in every plane


def test_valid_ids_follow_a_large_train(tmp_path: Path) -> None:
    from mrnet.data.synthetic import case_ids
    cfg = SynthesizeConfig(n_train=1200, n_valid=5)
    assert case_ids(cfg)["valid"] == ["1200", "1201", "1202", "1203", "1204"]
    assert case_ids(SMALL)["valid"][0] == "1130"


def test_generate_replaces_and_leaves_no_temp(small: Path, tmp_path: Path) -> None:
    root = tmp_path / "MRNet-v1.0"
    root.mkdir()
    (root / "stale.txt").write_text("old")
    generate(root, SMALL)
    assert not (root / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MRNet-v1.0"]
    assert _files(root) == _files(small)


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes(small: Path, tmp_path: Path) -> None:
    state = np.random.get_state()
    root = tmp_path / "again" / "MRNet-v1.0"
    generate(root, SMALL)
    assert _files(root) == _files(small)
    after = np.random.get_state()
    assert state[0] == after[0] and np.array_equal(state[1], after[1])  # global RNG untouched


def test_different_seed_gives_different_data(small: Path, tmp_path: Path) -> None:
    root = tmp_path / "MRNet-v1.0"
    generate(root, SynthesizeConfig(**{**SMALL.__dict__, "seed": SMALL.seed + 1}))
    a, b = _files(small), _files(root)
    npys = [k for k in a if k.endswith(".npy")]
    assert sum(a[k] != b.get(k) for k in npys) > len(npys) // 2


def test_exam_does_not_depend_on_dataset_size() -> None:
    labels = {"abnormal": 1, "acl": 1, "meniscus": 0}
    a = render_exam(5, labels, SMALL)
    b = render_exam(5, labels, SynthesizeConfig(**{**SMALL.__dict__, "n_train": 500}))
    assert all(np.array_equal(a[p], b[p]) for p in PLANES)


# ----------------------------------------------------------------------------- labels


@pytest.mark.parametrize("split", SPLITS)
def test_label_prevalence_and_structure(split: str) -> None:
    labels = draw_labels(400, np.random.default_rng(0), split)
    assert set(labels) == set(TASKS)
    for task in TASKS:
        assert labels[task].shape == (400,)
        assert set(np.unique(labels[task])) == {0, 1}
        assert abs(labels[task].mean() - PREVALENCE[split][task]) < 0.02
    tear = (labels["acl"] == 1) | (labels["meniscus"] == 1)
    assert (labels["abnormal"][tear] == 1).all()
    # tears and abnormal-only exams both occur, and the two tears co-occur sometimes
    assert ((labels["abnormal"] == 1) & ~tear).any()
    assert ((labels["acl"] == 1) & (labels["meniscus"] == 1)).any()


def test_valid_split_is_enriched_for_tears() -> None:
    rng = np.random.default_rng(1)
    train, valid = draw_labels(300, rng, "train"), draw_labels(300, rng, "valid")
    assert valid["acl"].mean() > 2 * train["acl"].mean()
    assert valid["meniscus"].mean() > train["meniscus"].mean()


def test_draw_labels_rejects_bad_split() -> None:
    with pytest.raises(ValueError, match="split"):
        draw_labels(10, np.random.default_rng(0), "test")


def test_findings_are_local() -> None:
    """A finding changes only a small part of the volume, and changes it most in its main
    plane: the tears show with the most contrast in sagittal."""
    cfg = SynthesizeConfig(seed=0, image_size=64, slices_min=16, slices_max=16)
    normal = {"abnormal": 1, "acl": 0, "meniscus": 0}
    for task in ("acl", "meniscus"):
        area: dict[str, float] = {}
        contrast: dict[str, list[np.ndarray]] = {plane: [] for plane in PLANES}
        for case in range(4):
            # The oedema draw follows the tear flag, so compare exams without any oedema.
            a = render_exam(case, {**normal, "abnormal": 0}, cfg)
            b = render_exam(case, {**normal, task: 1}, cfg)
            for plane in PLANES:
                # Same seed: anatomy and noise agree except where the finding (or its
                # optional bone bruise) was painted.
                diff = np.abs(a[plane].astype(int) - b[plane].astype(int))
                area[plane] = area.get(plane, 0) + (diff > 40).mean() / 4
                contrast[plane].append(diff[diff > 40])
        mean_change = {p: float(np.concatenate(c).mean()) for p, c in contrast.items()}
        assert all(0 < v < 0.05 for v in area.values()), (task, area)
        assert max(mean_change, key=mean_change.get) == "sagittal", (task, mean_change)


# ----------------------------------------------------------------------------- no leak


@pytest.mark.parametrize("stats", STATS)
@pytest.mark.parametrize("task", TASKS)
def test_global_statistics_do_not_reveal_labels(leak_features: dict, task: str,
                                                stats: str) -> None:
    auc = _global_stat_auc(leak_features[stats], task)
    assert auc <= LEAK_MAX_AUC, f"{task}: {stats} baseline reaches valid AUC {auc:.3f}"


def test_leak_check_catches_an_intensity_leak(leak_features: dict) -> None:
    """The check above can fail: brighten positive exams a little and it does."""
    leaky = {}
    for split, (x, y) in leak_features["mean-std-slices"].items():
        x = x.copy()
        means = x[:, 0::3]
        # +10 grey levels on the mean of each series of an ACL-positive exam (what a lesion
        # brightening a tenth of the volume by 100 would add): about half the spread that
        # the intensity nuisance gives the means, but systematic.
        means += 10.0 * y["acl"][:, None]
        leaky[split] = (x, y)
    assert _global_stat_auc(leaky, "acl") > LEAK_MAX_AUC


# ----------------------------------------------------------------------------- the stage


def _params(tmp_path: Path, data_root: str, **synth: object) -> None:
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    raw["data"]["root"] = data_root
    raw["synthesize"].update(synth)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))


def _run_stage(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    return subprocess.run([sys.executable, "-m", "stages.synthesize"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_stage_skips_phantoms_when_data_root_is_elsewhere(tmp_path: Path) -> None:
    _params(tmp_path, "real/MRNet-v1.0")
    out = tmp_path / "data" / "synthetic"
    (out / "MRNet-v1.0" / "train").mkdir(parents=True)
    (out / "MRNet-v1.0" / "train-acl.csv").write_text("0000,1\n")
    proc = _run_stage(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [p.relative_to(out).as_posix() for p in out.rglob("*")] == ["README.txt"]
    assert "real/MRNet-v1.0" in (out / "README.txt").read_text()
    assert not list(tmp_path.rglob("*.npy"))


def test_stage_generates_phantoms_at_data_root(tmp_path: Path) -> None:
    _params(tmp_path, "data/synthetic/MRNet-v1.0", n_train=4, n_valid=4, image_size=32,
            slices_min=2, slices_max=3)
    out = tmp_path / "data" / "synthetic"
    out.mkdir(parents=True)
    (out / "README.txt").write_text("stale")
    proc = _run_stage(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["MRNet-v1.0"]
    assert len(list((out / "MRNet-v1.0").rglob("*.npy"))) == 8 * 3
    assert "synthesize config" in proc.stderr


def test_stage_refuses_to_clear_a_folder_holding_the_data(tmp_path: Path) -> None:
    _params(tmp_path, "data/real/MRNet-v1.0", out="data")
    real = tmp_path / "data" / "real" / "MRNet-v1.0"
    real.mkdir(parents=True)
    (real / "train-acl.csv").write_text("0000,1\n")
    proc = _run_stage(tmp_path)
    assert proc.returncode == 2
    assert "synthesize.out" in proc.stderr and "data.root" in proc.stderr
    assert (real / "train-acl.csv").exists()
    shutil.rmtree(tmp_path / "data")
