"""Experiments beyond one machine: a grid of ``dvc exp run -S`` overrides run on a Ray cluster.

Each experiment is one Ray task, and each task runs what DVC prescribes for a machine that is
not the user's: clone the git remote at the current commit into the worker's scratch space,
``dvc exp run --pull --allow-missing --name NAME -S ...`` there (it pulls from the DVC remote
only the data that the stages it must rerun read, and skips the rest), then
``dvc exp push origin NAME`` (the experiment's git ref to the git remote, its outputs to the DVC
remote). The command that started the sweep then ``dvc exp pull``\\ s the experiments that
succeeded, so that ``dvc exp show`` in the user's repository compares them.

Ray is an optional dependency (``pip install -e .[cluster]``), imported only to run a sweep.
This module stands on the core alone; the command line (``mrnet sweep``) validates the
overrides against the project's params before anything starts.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from mrnet.core.errors import ParamsError, UserError
from mrnet.core.params import parse_yaml, section_of

CLUSTER_EXTRA = "install the cluster extra: pip install -e .[cluster]"
# Lines of a failed experiment's log kept for the report.
LOG_TAIL = 20
# DVC's footer after an unexpected error; never the line that says what went wrong.
DVC_FOOTER = "Having any troubles?"


class Job(NamedTuple):
    """One experiment as a worker runs it."""
    name: str
    overrides: tuple[str, ...]
    git_url: str
    commit: str
    dvc_remote: str
    dvc_url: str
    scratch: str | None = None  # a folder on the worker; None: its temporary folder


class Outcome(NamedTuple):
    """What a worker reports back about one experiment."""
    name: str
    overrides: tuple[str, ...]
    ok: bool
    step: str  # the command that failed, or "" when all succeeded
    last_line: str
    log_tail: tuple[str, ...]


# ---------------------------------------------------------------- the grid


def split_values(text: str) -> list[str]:
    """``a,b,[c,d]`` -> ``["a", "b", "[c,d]"]``: commas inside brackets or quotes stay."""
    values, depth, quote, current = [], 0, "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(current)
            current = ""
            continue
        current += char
    values.append(current)
    return values


def parse_set(text: str) -> tuple[str, list[str]]:
    """``KEY=V1,V2`` -> ``(KEY, [V1, V2])``; KEY may carry Hydra's ``+`` (a new key).

    Raises:
        UserError: no ``=``, an empty key or value, or a ``FILE:`` prefix.
    """
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key.lstrip("+") or not values:
        raise UserError(f"override {text!r}: expected KEY=VALUE[,VALUE...] (e.g. "
                        "train.lr=1e-4,3e-4)")
    if ":" in key or key.startswith(("~", "++")):
        raise UserError(f"override {text!r}: only keys of params.yaml can be swept, as KEY=… "
                        "or +KEY=… for a key new to its section")
    values_list = split_values(values)
    if any(not v for v in values_list):
        raise UserError(f"override {text!r}: an empty value (values are separated by commas)")
    return key, values_list


def expand_grid(sets: Sequence[str], experiments: Sequence[str] = ()) -> list[tuple[str, ...]]:
    """The experiments of a sweep, each a tuple of ``KEY=VALUE`` overrides.

    Args:
        sets: ``KEY=V1,V2,...`` groups; the grid is their cartesian product, in the order
            given (the last key varies fastest).
        experiments: whitespace-separated ``KEY=VALUE`` lists, one experiment each, after
            the grid.

    Raises:
        UserError: a malformed override, a key given twice in one experiment, an experiment
            given twice, or no experiment at all.
    """
    groups = [parse_set(s) for s in sets]
    keys = [k.lstrip("+") for k, _ in groups]
    if len(set(keys)) < len(keys):
        twice = sorted({k for k in keys if keys.count(k) > 1})
        raise UserError(f"-S {twice[0]} given twice; give its values once, comma-separated")
    grid = [tuple(f"{k}={v}" for (k, _), v in zip(groups, combo))
            for combo in itertools.product(*(vs for _, vs in groups))] if groups else []
    for text in experiments:
        pairs = [parse_set(p) for p in text.split()]
        if not pairs:
            raise UserError("--exp '': give KEY=VALUE overrides")
        for key, values in pairs:
            if len(values) > 1:
                raise UserError(f"--exp {text!r}: one value per key ({key} has "
                                f"{len(values)}); use -S for a grid")
        names = [k.lstrip("+") for k, _ in pairs]
        if len(set(names)) < len(names):
            raise UserError(f"--exp {text!r}: a key given twice")
        grid.append(tuple(f"{k}={vs[0]}" for k, vs in pairs))
    if not grid:
        raise UserError("no experiments: give -S KEY=V1,V2 and/or --exp 'KEY=V ...'")
    seen = set()
    for overrides in grid:
        if frozenset(overrides) in seen:
            raise UserError(f"experiment {' '.join(overrides)} given twice")
        seen.add(frozenset(overrides))
    return grid


def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of params ``raw`` with ``KEY=VALUE`` overrides set as ``dvc exp run -S`` sets
    them: values read as YAML (as DVC reads params.yaml), ``+KEY`` adds a key new to its
    section.

    Raises:
        ParamsError: a key params.yaml does not have (without ``+``), or a ``+KEY`` it has.
    """
    out = copy.deepcopy(dict(raw))
    for text in overrides:
        key, _, value = text.partition("=")
        new = key.startswith("+")
        node, last = section_of(out, key.lstrip("+"))
        if node is None:
            parents = key.lstrip("+").rpartition(".")[0]
            raise ParamsError(f"unknown params key {key.lstrip('+')} ({parents} is "
                              "not a section of params.yaml)")
        if new and last in node:
            raise ParamsError(f"{key}: params.yaml has {key[1:]} already; drop the +")
        if not new and last not in node:
            raise ParamsError(f"unknown params key {key} (not in params.yaml; a key new to its "
                              f"section takes Hydra's + prefix: +{text})")
        node[last] = parse_yaml(value, f"override {text}")
    return out


def check_experiments(raw: Mapping[str, Any], grid: Sequence[tuple[str, ...]],
                      validate: Callable[[dict[str, Any]], object]) -> None:
    """Each experiment's params pass ``validate`` (the project's params check).

    Raises:
        ParamsError: naming the experiment's overrides and what is wrong.
    """
    for overrides in grid:
        try:
            validate(apply_overrides(raw, overrides))
        except ParamsError as exc:
            raise ParamsError(f"{' '.join(overrides)}: {exc}") from None


# ---------------------------------------------------------------- the user's repository


def _run(args: Sequence[str], cwd: str | Path, env: Mapping[str, str] | None = None
         ) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=False, cwd=cwd, env=None if env is None else dict(env),
                          capture_output=True, text=True)


def last_line(output: str) -> str:
    """The line of a command's output that says what went wrong: the last error line, else
    the last line (DVC's support footer skipped)."""
    lines = [ln.strip() for ln in output.splitlines()
             if ln.strip() and not ln.strip().startswith(DVC_FOOTER)]
    errors = [ln for ln in lines if ln.lower().startswith("error")]
    return (errors or lines or ["(no output)"])[-1]


def dvc_command() -> str:
    """The ``dvc`` of this Python environment, else the one on PATH."""
    here = Path(sys.executable).parent / "dvc"
    return str(here) if here.is_file() else "dvc"


def tool_env() -> dict[str, str]:
    """The environment for git and dvc: this Python's bin folder first on PATH, so that the
    stages' ``python`` is the one that has the project's dependencies."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def absolute_url(url: str, root: Path) -> str:
    """A remote's address as a worker must see it: a local path made absolute."""
    local = root / url
    return str(local.resolve()) if "://" not in url and local.exists() else url


class Origin(NamedTuple):
    """Where the workers get the code and the data, checked."""
    root: Path
    commit: str
    git_remote: str
    git_url: str
    dvc_remote: str
    dvc_url: str


def check_repository(root: Path, git_remote: str = "origin", dvc_remote: str | None = None
                     ) -> Origin:
    """The repository is ready for a sweep: committed, its commit on the git remote, a DVC
    remote that holds the commit's data.

    Raises:
        UserError: one line saying what is missing and what to run.
    """
    env = tool_env()
    git = lambda *a: _run(["git", *a], root, env)
    dvc = lambda *a: _run([dvc_command(), *a], root, env)
    head = git("rev-parse", "--verify", "HEAD")
    if head.returncode != 0:
        raise UserError(f"{root}: not a git repository with a commit; workers clone a commit "
                        "(git init, git add, git commit)")
    commit = head.stdout.strip()
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.split("\n")
    dirty = [ln[3:] for ln in dirty if ln.strip()]
    if dirty:
        raise UserError(f"uncommitted changes ({', '.join(dirty[:3])}"
                        f"{', …' if len(dirty) > 3 else ''}): workers clone the commit, so "
                        "commit them and git push first")
    url = git("remote", "get-url", git_remote)
    if url.returncode != 0:
        raise UserError(f"no git remote {git_remote!r}: add one the workers can reach (git "
                        f"remote add {git_remote} URL) and git push")
    git_url = absolute_url(url.stdout.strip(), root)
    fetch = git("fetch", "--quiet", git_remote)
    if fetch.returncode != 0:
        raise UserError(f"git remote {git_remote} ({git_url}) cannot be read: "
                        f"{last_line(fetch.stderr)}")
    on_remote = git("for-each-ref", "--contains", commit, "--format=%(refname)",
                    f"refs/remotes/{git_remote}/")
    if not on_remote.stdout.strip():
        raise UserError(f"commit {commit[:7]} is not on git remote {git_remote}: git push "
                        f"{git_remote} HEAD first (workers clone it from there)")
    names = [ln.split()[0] for ln in dvc("remote", "list").stdout.splitlines() if ln.strip()]
    if dvc_remote is None:
        default = dvc("remote", "default")
        dvc_remote = default.stdout.strip() if default.returncode == 0 else ""
        if not dvc_remote:
            raise UserError("no DVC remote: add one the workers can reach (dvc remote add -d "
                            "NAME URL: S3, SSH or a shared folder), dvc push, and commit "
                            ".dvc/config")
    elif dvc_remote not in names:
        raise UserError(f"no DVC remote {dvc_remote!r} (remotes: {', '.join(names) or 'none'})"
                        f"; dvc remote add {dvc_remote} URL")
    dvc_url = absolute_url(dvc("config", f"remote.{dvc_remote}.url").stdout.strip(), root)
    status = dvc("status", "--cloud", "--remote", dvc_remote, "--json")
    if status.returncode != 0:
        raise UserError(f"DVC remote {dvc_remote} ({dvc_url}) cannot be read: "
                        f"{last_line(status.stdout + status.stderr)}")
    pending = [path for path, state in json.loads(status.stdout or "{}").items()
               if state == "new"]
    if pending:
        raise UserError(f"{len(pending)} outputs of commit {commit[:7]} are not on DVC remote "
                        f"{dvc_remote} ({pending[0]}, …): dvc push -r {dvc_remote} first")
    return Origin(root, commit, git_remote, git_url, dvc_remote, dvc_url)


def check_names(origin: Origin, names: Sequence[str]) -> None:
    """The experiment names are valid and new, locally and on the git remote.

    Raises:
        UserError: a name that is not a valid git ref name, or one that exists.
    """
    for name in names:
        if _run(["git", "check-ref-format", "--branch", name], origin.root).returncode != 0:
            raise UserError(f"experiment name {name!r} is not a valid git ref name; choose "
                            "another --name")
    taken: set[str] = set()
    for where in ((), (origin.git_remote,)):
        listed = _run([dvc_command(), "exp", "list", *where, "--all-commits", "--name-only"],
                      origin.root, tool_env())
        taken |= set(listed.stdout.split())
    clash = sorted(taken & set(names))
    if clash:
        raise UserError(f"experiment {clash[0]} exists already: choose another --name")


def experiment_names(prefix: str, count: int) -> list[str]:
    """``PREFIX-1`` … ``PREFIX-N``."""
    return [f"{prefix}-{i}" for i in range(1, count + 1)]


# ---------------------------------------------------------------- a worker


def worker_commands(job: Job, clone: str) -> list[tuple[str, list[str]]]:
    """The steps of one experiment on a worker, as (step, command) pairs."""
    dvc = dvc_command()
    sets = [a for o in job.overrides for a in ("-S", o)]
    return [
        ("git clone", ["git", "clone", "--quiet", job.git_url, clone]),
        ("git checkout", ["git", "-C", clone, "checkout", "--quiet", "--detach", job.commit]),
        ("dvc remote", [dvc, "remote", "add", "--local", "--force", "--default",
                        job.dvc_remote, job.dvc_url]),
        ("dvc exp run", [dvc, "exp", "run", "--pull", "--allow-missing", "--name", job.name,
                         *sets]),
        ("dvc exp push", [dvc, "exp", "push", "origin", job.name]),
    ]


def run_experiment(job: Job) -> Outcome:
    """Run one experiment in a fresh clone on this machine and push it; never raises for a
    failing command: the outcome says which step failed and its last log line."""
    scratch = tempfile.mkdtemp(prefix=f"mrnet-sweep-{job.name}-", dir=job.scratch)
    clone = os.path.join(scratch, "repo")
    env = tool_env()
    env.setdefault("TQDM_DISABLE", "1")  # progress bars are noise in a worker's log
    log: list[str] = []
    try:
        for step, cmd in worker_commands(job, clone):
            proc = subprocess.run(cmd, check=False, cwd=clone if os.path.isdir(clone) else scratch,
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
            log += [f"$ {' '.join(cmd)}", *proc.stdout.splitlines()]
            if proc.returncode != 0:
                return Outcome(job.name, job.overrides, False, step, last_line(proc.stdout),
                               tuple(log[-LOG_TAIL:]))
        return Outcome(job.name, job.overrides, True, "", log[-1] if log else "", ())
    except OSError as exc:  # a tool missing on the worker, a full disk
        return Outcome(job.name, job.overrides, False, "worker", f"error: {exc}",
                       tuple(log[-LOG_TAIL:]))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ---------------------------------------------------------------- the driver


def import_ray() -> Any:
    """The ``ray`` module.

    Raises:
        UserError: Ray is not installed.
    """
    try:
        import ray
    except ImportError:
        raise UserError(f"mrnet sweep needs Ray: {CLUSTER_EXTRA}") from None
    return ray


def run_on_ray(jobs: Sequence[Job], address: str | None = None, num_cpus: int | None = None,
               cpus_per_experiment: float = 1, gpus_per_experiment: float = 0,
               on_done: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Run ``jobs`` as Ray tasks, on the cluster at ``address`` or on a local one of
    ``num_cpus`` CPUs; the outcomes in the order of ``jobs``.

    A task that dies (its worker lost, say) is a failed outcome too, so the other experiments
    still come back.
    """
    ray = import_ray()
    if address:
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, ray.exceptions.RayError) as exc:
            raise UserError(f"cannot join the Ray cluster at {address}: "
                            f"{str(exc).strip().splitlines()[0]} (ray start --head prints "
                            "the address; ray status checks it)") from None
    else:
        # "local": a new cluster of its own, even where another one runs on this machine
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=False)
    try:
        task = ray.remote(run_experiment).options(num_cpus=cpus_per_experiment,
                                                  num_gpus=gpus_per_experiment, max_retries=0)
        refs = {task.remote(job): job for job in jobs}
        outcomes: dict[str, Outcome] = {}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                job = refs[ref]
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    text = str(exc).strip().splitlines()
                    outcome = Outcome(job.name, job.overrides, False, "ray task",
                                      last_line("\n".join(text)), tuple(text[-LOG_TAIL:]))
                outcomes[job.name] = outcome
                if on_done is not None:
                    on_done(outcome)
        return [outcomes[job.name] for job in jobs]
    finally:
        ray.shutdown()


def pull_experiments(origin: Origin, names: Sequence[str]) -> None:
    """``dvc exp pull GIT_REMOTE NAME...`` into the user's repository.

    Raises:
        UserError: the pull failed (its last line).
    """
    if not names:
        return
    proc = _run([dvc_command(), "exp", "pull", origin.git_remote, *names], origin.root,
                tool_env())
    if proc.returncode != 0:
        raise UserError(f"dvc exp pull {origin.git_remote} {' '.join(names)} failed: "
                        f"{last_line(proc.stdout + proc.stderr)}")
