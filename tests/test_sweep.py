"""`mrnet sweep`: a grid of experiments on a Ray cluster, through the real git, dvc and Ray.

The checks that stop a sweep before it starts run on a committed project without outputs; the
sweep itself runs on a local Ray cluster against a bare git remote and a local-folder DVC
remote, on a tiny pipeline reproduced once.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from e2e import MRNET_PARAMS, copy_pipeline, init_repo, run, set_params
from helpers import PROJECT

from mrnet import PLANES, TASKS, cli, sweep
from mrnet.core.errors import ParamsError, UserError

pytestmark = pytest.mark.e2e

# The shared tiny pipeline (tests/e2e.py), without the multitask network.
TINY_PARAMS = {**MRNET_PARAMS, "multitask": {"enabled": False}}


def mrnet_sweep(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return run(repo, sys.executable, "-m", "mrnet", "sweep", *args, check=False)


def make_project(repo: Path) -> Path:
    """The project's pipeline with tiny params, committed in a new git + DVC repository."""
    copy_pipeline(repo)
    set_params(repo, TINY_PARAMS)
    init_repo(repo)
    return repo


def add_remotes(repo: Path, base: Path) -> tuple[Path, Path]:
    """A bare git remote (origin) with the commit pushed, a local-folder default DVC remote."""
    git_remote, dvc_remote = base / "remote.git", base / "dvc-store"
    run(base, "git", "init", "-q", "--bare", str(git_remote))
    run(repo, "git", "remote", "add", "origin", str(git_remote))
    run(repo, "dvc", "remote", "add", "-d", "store", str(dvc_remote))
    run(repo, "git", "commit", "-qam", "remotes")
    run(repo, "git", "push", "-q", "origin", "HEAD")
    return git_remote, dvc_remote


def exp_refs(git_remote: Path) -> list[str]:
    return run(git_remote, "git", "for-each-ref", "--format=%(refname)",
               "refs/exps").stdout.split()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A committed project without outputs or remotes (cheap: nothing is reproduced)."""
    return make_project(tmp_path_factory.mktemp("template") / "repo")


@pytest.fixture
def project(template: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`template`."""
    repo = tmp_path / "repo"
    shutil.copytree(template, repo, symlinks=True)
    return repo


# ---------------------------------------------------------------- the grid


def test_grid_is_the_product_of_the_sets_then_the_explicit_experiments() -> None:
    grid = sweep.expand_grid(["train.lr=1e-4,3e-4", "train.seed=0,1"],
                             ["+task.acl.lr=0.001 ensemble.C=2"])
    assert grid == [("train.lr=1e-4", "train.seed=0"), ("train.lr=1e-4", "train.seed=1"),
                    ("train.lr=3e-4", "train.seed=0"), ("train.lr=3e-4", "train.seed=1"),
                    ("+task.acl.lr=0.001", "ensemble.C=2")]
    # commas inside a list value do not split it
    assert sweep.expand_grid(["k=[1,2],3"]) == [("k=[1,2]",), ("k=3",)]


@pytest.mark.parametrize(("sets", "exps", "message"), [
    ([], [], "no experiments"),
    (["train.lr"], [], "expected KEY=VALUE"),
    (["train.lr=1e-4,"], [], "an empty value"),
    (["train.lr=1", "train.lr=2"], [], "train.lr given twice"),
    ([], ["train.lr=1,2"], "one value per key"),
    (["ensemble.C=1"], ["ensemble.C=1"], "ensemble.C=1 given twice"),
    (["mura/params.yaml:train.lr=1"], [], "only keys of params.yaml"),
])
def test_malformed_grids_are_refused(sets: list[str], exps: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        sweep.expand_grid(sets, exps)


def test_overrides_are_checked_as_the_pipeline_checks_params() -> None:
    from mrnet.config import params_from_dict
    from mrnet.core.params import load_yaml

    raw = load_yaml(PROJECT / "params.yaml")
    sweep.check_experiments(raw, [("train.lr=3e-4",), ("+task.meniscus.epochs=2",)],
                            params_from_dict)
    changed = sweep.apply_overrides(raw, ["train.lr=3e-4", "+task.meniscus.epochs=2"])
    assert changed["train"]["lr"] == 3e-4 and changed["task"]["meniscus"] == {"epochs": 2}
    assert raw["task"]["meniscus"] == {}  # the original is untouched
    for overrides, message in [
        (("train.lrr=1",), "train.lrr=1: unknown params key train.lrr"),
        (("task.acl.lr=1",), r"a key new to its section takes Hydra's \+ prefix"),
        (("+train.lr=1",), r"params.yaml has train.lr already; drop the \+"),
        (("train.lr=-1",), r"train.lr=-1: train.lr must be > 0"),
        (("+train.colour=red",), "train.colour=red: .*colour"),
    ]:
        with pytest.raises(ParamsError, match=message):
            sweep.check_experiments(raw, [("ensemble.C=2",), overrides], params_from_dict)


def test_the_last_log_line_is_the_error_not_dvcs_footer() -> None:
    log = ("Running stage 'validate':\nerror: data/x: not found\n"
           "ERROR: failed to reproduce 'validate': failed to run: python -m stages.validate\n"
           "Having any troubles? Hit us up at https://dvc.org/support, we are always happy "
           "to help!\n")
    assert sweep.last_line(log).startswith("ERROR: failed to reproduce 'validate'")
    assert sweep.last_line("one\ntwo\n\n") == "two"


# ---------------------------------------------------------------- checks before anything runs


def test_print_shows_the_experiments_and_the_worker_commands(project: Path,
                                                             tmp_path: Path) -> None:
    git_remote, _ = add_remotes(project, tmp_path)
    proc = mrnet_sweep(project, "-S", "train.lr=1e-4,3e-4", "-S", "train.seed=0,1", "--name",
                       "g", "--print")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "  g-2: train.lr=1e-4 train.seed=1" in lines
    assert "  g-3: train.lr=3e-4 train.seed=0" in lines
    assert not any(line.startswith("  g-5") for line in lines)
    commit = run(project, "git", "rev-parse", "HEAD").stdout.strip()
    assert f"  git clone --quiet {git_remote} CLONE" in lines
    assert f"  git -C CLONE checkout --quiet --detach {commit}" in lines
    run_line = next(line for line in lines if " exp run " in line)
    assert run_line.endswith("exp run --pull --allow-missing --name g-1 -S train.lr=1e-4 "
                             "-S train.seed=0")
    assert any(line.endswith("exp push origin g-1") for line in lines)
    assert exp_refs(git_remote) == []


def refused(repo: Path, *args: str) -> str:
    """The one error line of a sweep that must not start; nothing changed in ``repo``."""
    before = run(repo, "git", "status", "--porcelain").stdout
    proc = mrnet_sweep(repo, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert run(repo, "git", "status", "--porcelain").stdout == before
    assert run(repo, "dvc", "exp", "list", "--name-only").stdout.strip() == ""
    return errors[0]


def test_an_unknown_key_is_named(project: Path, tmp_path: Path) -> None:
    add_remotes(project, tmp_path)
    error = refused(project, "-S", "ensemble.C=1,2", "-S", "train.lrr=1e-4")
    assert "unknown params key train.lrr" in error


def test_an_invalid_value_is_named_with_its_experiment(project: Path, tmp_path: Path) -> None:
    add_remotes(project, tmp_path)
    error = refused(project, "-S", "ensemble.C=1", "--exp", "train.epochs=0")
    assert "train.epochs=0: train.epochs must be at least 1" in error


def test_uncommitted_changes_are_refused(project: Path, tmp_path: Path) -> None:
    add_remotes(project, tmp_path)
    with (project / "params.yaml").open("a") as f:
        f.write("\n# a local edit\n")
    error = refused(project, "-S", "ensemble.C=1,2")
    assert "uncommitted changes (params.yaml)" in error and "commit them" in error


def test_no_git_remote_says_what_to_add(project: Path) -> None:
    error = refused(project, "-S", "ensemble.C=1,2")
    assert "no git remote 'origin'" in error and "git remote add origin URL" in error


def test_a_commit_not_pushed_says_push(project: Path, tmp_path: Path) -> None:
    add_remotes(project, tmp_path)
    (project / "notes.txt").write_text("later\n")
    run(project, "git", "add", "notes.txt")
    run(project, "git", "commit", "-qm", "not pushed")
    error = refused(project, "-S", "ensemble.C=1,2")
    assert "is not on git remote origin: git push origin HEAD" in error


def test_no_dvc_remote_says_what_to_add(project: Path, tmp_path: Path) -> None:
    git_remote = tmp_path / "remote.git"
    run(tmp_path, "git", "init", "-q", "--bare", str(git_remote))
    run(project, "git", "remote", "add", "origin", str(git_remote))
    run(project, "git", "push", "-q", "origin", "HEAD")
    error = refused(project, "-S", "ensemble.C=1,2")
    assert "no DVC remote" in error and "dvc remote add -d" in error
    error = refused(project, "-S", "ensemble.C=1,2", "--dvc-remote", "shared")
    assert "no DVC remote 'shared'" in error


def test_without_ray_one_line_names_the_extra(project: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    add_remotes(project, tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    monkeypatch.chdir(project)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["sweep", "-S", "ensemble.C=1,2", "--name", "r"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("error: mrnet sweep needs Ray: install the cluster extra: "
                       "pip install -e .[cluster]")
    assert exp_refs(tmp_path / "remote.git") == []


# ---------------------------------------------------------------- a sweep on a local Ray cluster


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny pipeline reproduced, committed and pushed: (repository, bare git remote)."""
    base = tmp_path_factory.mktemp("sweep")
    repo = make_project(base / "repo")
    git_remote, _ = add_remotes(repo, base)
    run(repo, "dvc", "repro")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "baseline")
    run(repo, "git", "push", "-q", "origin", "HEAD")
    run(repo, "dvc", "push", "-q")
    return repo, git_remote


def experiments(repo: Path) -> dict[str, dict]:
    """``dvc exp show --json`` of ``repo``: experiment name -> its rev and data."""
    shown = json.loads(run(repo, "dvc", "exp", "show", "--json").stdout)
    found = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                found[rev["name"]] = rev
    return found


def lock_outs(repo: Path, rev: str) -> dict[str, str]:
    """Output path -> md5, from dvc.lock at ``rev``."""
    lock = yaml.safe_load(run(repo, "git", "show", f"{rev}:dvc.lock").stdout)
    return {out["path"]: out["md5"] for stage in lock["stages"].values()
            for out in stage.get("outs") or []}


@pytest.mark.slow
def test_sweep_runs_on_local_ray_and_the_experiments_come_back(reproduced) -> None:
    repo, git_remote = reproduced
    head = run(repo, "git", "rev-parse", "HEAD").stdout.strip()
    # One experiment reruns only evaluate, one retrains the ACL CNNs (and what reads them), and
    # one points at a dataset the workers do not have: its params are valid, its run fails.
    proc = mrnet_sweep(repo, "-S", "evaluate.bootstrap=30", "--exp", "+task.acl.lr=0.0003",
                       "--exp", "data.root=absent/MRNet-v1.0", "--name", "t",
                       "--num-cpus", "2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "done   t-1: evaluate.bootstrap=30" in proc.stdout
    assert "done   t-2: +task.acl.lr=0.0003" in proc.stdout
    assert "FAILED t-3: data.root=absent/MRNet-v1.0" in proc.stdout
    failures = [ln for ln in proc.stderr.splitlines() if ln.startswith("failed: ")]
    assert len(failures) == 1, proc.stderr
    assert failures[0].startswith("failed: t-3 [data.root=absent/MRNet-v1.0] at dvc exp run: ")
    assert "absent/MRNet-v1.0" in failures[0].split(" at dvc exp run: ")[1], failures[0]

    # Both successful experiments are in the user's repository, with their params and metrics.
    found = experiments(repo)
    assert {"t-1", "t-2"} <= set(found) and "t-3" not in found
    for name in ("t-1", "t-2"):
        data = found[name]["data"]
        for task in TASKS:
            assert 0.0 <= data["metrics"][f"metrics/{task}.json"]["data"]["auc"] <= 1.0
    params = {n: found[n]["data"]["params"]["params.yaml"]["data"] for n in ("t-1", "t-2")}
    assert params["t-1"]["evaluate"]["bootstrap"] == 30 and params["t-1"]["task"]["acl"] == {}
    assert params["t-2"]["task"]["acl"] == {"lr": 0.0003}
    assert params["t-2"]["evaluate"]["bootstrap"] == TINY_PARAMS["evaluate"]["bootstrap"]

    # Each worker reran only what its override touches; the rest came from the DVC remote.
    base = lock_outs(repo, head)
    eval_exp = lock_outs(repo, found["t-1"]["rev"])
    lr_exp = lock_outs(repo, found["t-2"]["rev"])
    for plane in PLANES:
        assert eval_exp[f"models/acl-{plane}.pt"] == base[f"models/acl-{plane}.pt"]
        assert lr_exp[f"models/acl-{plane}.pt"] != base[f"models/acl-{plane}.pt"]
        assert lr_exp[f"models/abnormal-{plane}.pt"] == base[f"models/abnormal-{plane}.pt"]
    assert eval_exp["models/ensemble-acl.json"] == base["models/ensemble-acl.json"]
    assert lr_exp["models/ensemble-acl.json"] != base["models/ensemble-acl.json"]
    # dvc exp pull brought the retrained models' data, too.
    md5 = lr_exp["models/acl-sagittal.pt"]
    assert (repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).is_file()

    # The user's workspace is where it was; the git remote holds exactly the two experiments.
    assert run(repo, "git", "rev-parse", "HEAD").stdout.strip() == head
    assert run(repo, "git", "status", "--porcelain", "--untracked-files=no").stdout == ""
    assert sorted(ref.rsplit("/", 1)[1] for ref in exp_refs(git_remote)) == ["t-1", "t-2"]
