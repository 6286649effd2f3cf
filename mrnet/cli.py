"""The ``mrnet`` command (``pip install -e .``; also ``python -m mrnet``).

Commands::

    mrnet predict INPUT_CSV OUTPUT_CSV [options]   the official MRNet evaluation format
    mrnet exam PATH... [--json OUT] [--viewer OUT.html]
                                                   one exam: .npy series or a DICOM folder
    mrnet import-dicom EXAM_DIR OUT_DIR [--series S]...
                                                   a scanner's DICOM exam -> three MRNet .npy
    mrnet weights [--backbone B] [--install FILE]  where the ImageNet weights go; check them
    mrnet recipe NAME --data-root DIR [--queue] [--print]
                                                   run a recipe of recipes/ with dvc exp run
    mrnet sweep -S KEY=V1,V2 ... [--exp 'KEY=V ...'] [--address ADDR]
                                                   a grid of experiments on a Ray cluster

``predict`` and ``exam`` take the models that the project's ``params.yaml`` names. The
project is the current folder or one above it holding ``dvc.yaml``, ``params.yaml`` and
``stages/``, else the checkout the package was installed from with ``pip install -e .``; so
the commands work from any directory. ``--params`` or ``--models`` choose explicitly.
The pipeline's stages stay what ``dvc.yaml`` runs: ``python -m stages.<name>`` from the
project root (``dvc repro``).
"""

from __future__ import annotations

import argparse
import copy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mrnet import PLANES
from mrnet.core.errors import ParamsError, UserError, cli
from mrnet.core.params import load_yaml, section_of

PROJECT_MARKERS = ("dvc.yaml", "params.yaml", "stages")


def project_root(start: str | Path | None = None) -> Path | None:
    """The project folder: ``start`` (default: the current folder) or a parent of it, else the
    checkout of an editable install; None when there is none."""
    start = Path.cwd() if start is None else Path(start).resolve()
    installed = Path(__file__).resolve().parents[1]
    for folder in (start, *start.parents, installed):
        if all((folder / m).exists() for m in PROJECT_MARKERS):
            return folder
    return None


def _has_option(argv: Sequence[str], name: str) -> bool:
    return any(a == name or a.startswith(name + "=") for a in argv)


def with_project_params(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--params PROJECT/params.yaml`` added unless it chooses the models."""
    argv = list(argv)
    if _has_option(argv, "--params") or _has_option(argv, "--models"):
        return argv
    root = project_root()
    return argv if root is None else [*argv, "--params", str(root / "params.yaml")]


# ---------------------------------------------------------------- predict, exam


def cmd_predict(argv: Sequence[str]) -> int:
    from mrnet.inference import predict

    predict.main(with_project_params(argv), prog="mrnet predict")
    return 0


def cmd_exam(argv: Sequence[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: mrnet exam PATH... [--json OUT] [--viewer OUT.html] [--task T] "
              "[--params P | --models DIR] [--device D]\n\nOne exam's probabilities: the same "
              "as `mrnet predict --exam PATH...` (see `mrnet predict --help`). PATH: a "
              "folder of axial/coronal/sagittal .npy series, three .npy paths, or a folder of "
              "one exam's DICOM files.")
        return 0
    return cmd_predict(["--exam", *argv])


# ---------------------------------------------------------------- import-dicom


@cli
def cmd_import_dicom(argv: Sequence[str]) -> int:
    from mrnet.data import dicom

    parser = argparse.ArgumentParser(
        prog="mrnet import-dicom", description=dicom.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exam_dir", help="folder of one exam's DICOM files (any names)")
    parser.add_argument("out_dir", help="where axial.npy, coronal.npy, sagittal.npy and "
                                        f"{dicom.SIDECAR} go")
    parser.add_argument("--series", action="append", default=[], metavar="NUMBER|DESCRIPTION",
                        help="use this series for its plane (repeat for several planes); "
                             "the other planes are chosen automatically")
    parser.add_argument("--size", type=int, default=dicom.IMAGE_SIZE,
                        help="output image size (default %(default)s, as MRNet)")
    args = parser.parse_args(argv)
    if args.size < 32:
        parser.error("--size must be at least 32")
    sidecar = dicom.import_exam(args.exam_dir, args.out_dir, args.series, args.size)
    out = Path(args.out_dir)
    for plane in PLANES:
        p = sidecar["planes"][plane]
        print(f"{plane:<9} series {p['series_number']} {p['description']!r}: {p['slices']} "
              f"slices -> {out / (plane + '.npy')}  ({p['why']})")
    for s in sidecar["ignored"]:
        print(f"ignored   series {s['series_number']} {s['description']!r}: {s['reason']}")
    print(f"details: {out / dicom.SIDECAR}")
    return 0


# ---------------------------------------------------------------- weights


@cli
def cmd_weights(argv: Sequence[str]) -> int:
    from mrnet.config import load_params
    from mrnet.core.errors import WeightsNotFoundError
    from mrnet.core.weights import BACKBONES, expected_prefix, published, verify_file

    root = project_root()
    default = "alexnet"
    if root is not None:
        default = load_params(root / "params.yaml").model.backbone
    parser = argparse.ArgumentParser(
        prog="mrnet weights",
        description="Where the ImageNet weights of a backbone must be (the local torch cache) "
                    "and torchvision's address of them; checks a present file against the "
                    "sha256 prefix in its name. Nothing is downloaded.")
    parser.add_argument("--backbone", choices=BACKBONES, default=default,
                        help="default: model.backbone of the project (%(default)s)")
    parser.add_argument("--install", metavar="FILE",
                        help="a downloaded weights file: check it and copy it into the cache")
    args = parser.parse_args(argv)
    path, url = published(args.backbone)
    print(f"backbone: {args.backbone}\nfile:     {path.name}\naddress:  {url}\nplace at: {path}")
    if args.install:
        source = Path(args.install)
        if not source.is_file():
            raise UserError(f"{source}: file not found")
        if expected_prefix(source) != expected_prefix(path):
            raise UserError(f"{source}: not {path.name} (another hash in its name); download "
                            f"{url}")
        verify_file(source, url)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        shutil.copyfile(source, tmp)
        tmp.replace(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"{path} does not exist: download {url} on a machine with "
                                   "internet and copy it there, or run mrnet weights --install "
                                   "DOWNLOADED_FILE")
    print(f"sha256:   {verify_file(path, url)} (matches the hash in its name)")
    return 0


# ---------------------------------------------------------------- recipes


def load_recipe(name: str, root: str | Path) -> dict[str, Any]:
    """A recipe from ``recipes/NAME.yaml`` of the project (or a path to a recipe file).

    Raises:
        UserError: no such recipe, or it is not ``{name, version, params: {key: value}}``.
    """
    path = Path(name) if name.endswith((".yaml", ".yml")) else Path(root) / "recipes" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (Path(root) / "recipes").glob("*.yaml"))
        raise UserError(f"{path}: recipe not found (recipes: {', '.join(known) or 'none'})")
    recipe = load_yaml(path, error=UserError)  # numbers read as DVC reads them (1e-05)
    ok = (isinstance(recipe, dict) and isinstance(recipe.get("name"), str)
          and isinstance(recipe.get("version"), int) and isinstance(recipe.get("params"), dict)
          and all(isinstance(k, str) for k in recipe["params"]))
    if not ok:
        raise UserError(f"{path}: a recipe needs name (text), version (integer) and params "
                        "(params.yaml keys with their values)")
    return recipe


def apply_overrides(raw: Mapping[str, Any], pairs: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of params ``raw`` with dotted ``key: value`` pairs set, as ``dvc exp run -S`` does.

    Raises:
        ParamsError: a key that params.yaml does not have (``-S`` would need ``+``).
    """
    out = copy.deepcopy(dict(raw))
    for key, value in pairs.items():
        node, last = section_of(out, key)
        if node is None or last not in node:
            raise ParamsError(f"recipe key {key} is not in params.yaml")
        node[last] = value
    return out


def override_value(value: Any) -> str:
    """A value as ``-S key=value`` writes it (YAML scalars: true/false, numbers, text)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        # "1e-05" is text to a YAML 1.1 reader (PyYAML); "1.0e-05" is a number to every reader.
        return text.replace("e", ".0e", 1) if "e" in text and "." not in text else text
    if isinstance(value, (int, str)):
        return str(value)
    raise UserError(f"recipe value {value!r}: only booleans, numbers and text can be set")


def recipe_command(recipe: Mapping[str, Any], data_root: str | Path, queue: bool = False,
                   name: str | None = None) -> list[str]:
    """The ``dvc exp run`` command of a recipe on the dataset at ``data_root``."""
    cmd = ["dvc", "exp", "run"]
    if queue:
        cmd.append("--queue")
    if name:
        cmd += ["--name", name]
    cmd += ["-S", f"data.root={Path(data_root).resolve()}"]
    for key, value in recipe["params"].items():
        cmd += ["-S", f"{key}={override_value(value)}"]
    return cmd


@cli
def cmd_recipe(argv: Sequence[str]) -> int:
    from mrnet.config import params_from_dict

    parser = argparse.ArgumentParser(
        prog="mrnet recipe",
        description="Run a named, versioned recipe (recipes/NAME.yaml) on a dataset in the "
                    "MRNet-v1.0 layout as one DVC experiment: dvc exp run -S data.root=DIR -S "
                    "key=value ... in the project folder.")
    parser.add_argument("name", help="a recipe of recipes/ (e.g. paper) or a recipe file")
    parser.add_argument("--data-root", required=True, metavar="DIR",
                        help="the dataset folder (made absolute, so queued runs find it)")
    parser.add_argument("--queue", action="store_true", help="queue it (dvc queue start runs it)")
    parser.add_argument("--name", dest="exp_name", help="experiment name for dvc exp run")
    parser.add_argument("--print", action="store_true", dest="dry",
                        help="print the command and check its params, do not run it")
    args = parser.parse_args(argv)
    root = project_root()
    if root is None:
        raise UserError("no project found (a folder with dvc.yaml, params.yaml and stages/); "
                        "run from the project folder")
    recipe = load_recipe(args.name, root)
    data_root = Path(args.data_root)
    if not data_root.is_dir():
        raise UserError(f"{data_root}: dataset folder not found (--data-root takes the folder "
                        "holding train/, valid/ and the label CSVs)")
    cmd = recipe_command(recipe, data_root, args.queue, args.exp_name)
    # The recipe's params must be valid before DVC starts anything.
    raw = load_yaml(root / "params.yaml")
    params_from_dict(apply_overrides(raw, {**recipe["params"],
                                           "data.root": str(data_root.resolve())}))
    print(f"recipe {recipe['name']} v{recipe['version']} in {root}:\n{shlex.join(cmd)}")
    sys.stdout.flush()
    if args.dry:
        return 0
    return subprocess.run(cmd, cwd=root).returncode


# ---------------------------------------------------------------- sweep


SWEEP_HELP = """\
Run a grid of DVC experiments on a Ray cluster: each experiment is one Ray task that clones
the git remote at the current commit into the worker's scratch space, runs
`dvc exp run --pull --allow-missing --name NAME -S KEY=VALUE ...` there and
`dvc exp push`es it; then the experiments are `dvc exp pull`ed here, so
`dvc exp show` compares them. A failed experiment is reported with its overrides and the
last line of its log; the others still come back (exit status 1 if any failed).

Before anything starts: every experiment's params are checked as the pipeline checks them,
the work tree must be committed, the commit on the git remote and its data on the DVC remote
(both reachable by the workers). Needs Ray: pip install -e .[cluster].

examples:
  mrnet sweep -S train.lr=1e-4,3e-4 -S train.seed=0,1     4 experiments (the product)
  mrnet sweep --exp 'ensemble.C=0.1' --exp '+task.acl.lr=3e-4 +task.acl.epochs=12'
                                                           2 experiments, as written
  mrnet sweep -S train.seed=0,1,2 --address head-node:6379 on an existing Ray cluster
  mrnet sweep -S ensemble.C=0.1,10 --print                 check and show, start nothing
"""


@cli
def cmd_sweep(argv: Sequence[str]) -> int:
    import os
    import secrets

    from mrnet import sweep
    from mrnet.config import params_from_dict

    parser = argparse.ArgumentParser(
        prog="mrnet sweep", description=SWEEP_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-S", "--set", action="append", default=[], dest="sets",
                        metavar="KEY=V1[,V2...]",
                        help="a params.yaml key and its values (dvc exp run -S syntax; +KEY "
                             "for a key new to its section); repeat for more keys: the grid "
                             "is every combination")
    parser.add_argument("--exp", action="append", default=[], metavar="'KEY=V [KEY=V ...]'",
                        help="one more experiment with exactly these overrides (repeatable)")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                        help="the Ray cluster (ray start --head prints it; default: "
                             "$RAY_ADDRESS, else a local cluster on this machine)")
    parser.add_argument("--num-cpus", type=int,
                        help="CPUs of the local cluster (default: all; not with --address)")
    parser.add_argument("--cpus-per-experiment", type=float, default=1.0,
                        help="CPUs Ray reserves for each experiment (default %(default)s)")
    parser.add_argument("--gpus-per-experiment", type=float, default=0.0,
                        help="GPUs Ray reserves for each experiment (default %(default)s)")
    parser.add_argument("--name", help="experiment names are NAME-1, NAME-2, ... (default: "
                                       "sweep- and 4 random hex digits)")
    parser.add_argument("--git-remote", default="origin",
                        help="the git remote the workers clone and push to (default "
                             "%(default)s)")
    parser.add_argument("--dvc-remote", help="the DVC remote the workers pull from and push "
                                             "to (default: the default remote)")
    parser.add_argument("--scratch", metavar="DIR",
                        help="folder on each worker for the clones (default: its temporary "
                             "folder); each clone is removed when its experiment ends")
    parser.add_argument("--print", action="store_true", dest="dry",
                        help="check everything and print the experiments and each worker's "
                             "commands; start nothing")
    args = parser.parse_args(argv)
    if args.num_cpus is not None and args.address:
        parser.error("--num-cpus sizes a local cluster; an existing one (--address) has its own")
    if args.cpus_per_experiment <= 0 or args.gpus_per_experiment < 0:
        parser.error("--cpus-per-experiment must be > 0 and --gpus-per-experiment >= 0")
    root = project_root()
    if root is None:
        raise UserError("no project found (a folder with dvc.yaml, params.yaml and stages/); "
                        "run from the project folder")
    grid = sweep.expand_grid(args.sets, args.exp)
    sweep.check_experiments(load_yaml(root / "params.yaml"), grid, params_from_dict)
    origin = sweep.check_repository(root, args.git_remote, args.dvc_remote)
    names = sweep.experiment_names(args.name or f"sweep-{secrets.token_hex(2)}", len(grid))
    sweep.check_names(origin, names)
    jobs = [sweep.Job(name, overrides, origin.git_url, origin.commit, origin.dvc_remote,
                      origin.dvc_url, args.scratch) for name, overrides in zip(names, grid)]
    where = args.address or f"a local Ray cluster ({args.num_cpus or 'all'} CPUs)"
    print(f"{len(jobs)} experiments of commit {origin.commit[:7]} on {where}; code from "
          f"{origin.git_url}, data from DVC remote {origin.dvc_remote} ({origin.dvc_url})")
    for job in jobs:
        print(f"  {job.name}: {' '.join(job.overrides)}")
    if args.dry:
        print("each worker runs, in a fresh folder:")
        for _, cmd in sweep.worker_commands(jobs[0], "CLONE"):
            print(f"  {shlex.join(cmd)}")
        return 0
    sweep.import_ray()  # before anything starts
    sys.stdout.flush()

    def report(outcome: sweep.Outcome) -> None:
        state = "done  " if outcome.ok else "FAILED"
        print(f"{state} {outcome.name}: {' '.join(outcome.overrides)}", flush=True)

    outcomes = sweep.run_on_ray(jobs, args.address, args.num_cpus, args.cpus_per_experiment,
                                args.gpus_per_experiment, on_done=report)
    succeeded = [o.name for o in outcomes if o.ok]
    sweep.pull_experiments(origin, succeeded)
    if succeeded:
        print(f"pulled {', '.join(succeeded)}; compare them: dvc exp show --only-changed")
    failed = [o for o in outcomes if not o.ok]
    for o in failed:
        print(f"--- {o.name} ({' '.join(o.overrides)}): {o.step} failed; its log ends:",
              *(f"    {line}" for line in o.log_tail), sep="\n", file=sys.stderr)
    for o in failed:
        print(f"failed: {o.name} [{' '.join(o.overrides)}] at {o.step}: {o.last_line}",
              file=sys.stderr)
    return 1 if failed else 0


# ---------------------------------------------------------------- main


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "predict": cmd_predict,
    "exam": cmd_exam,
    "import-dicom": cmd_import_dicom,
    "weights": cmd_weights,
    "recipe": cmd_recipe,
    "sweep": cmd_sweep,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``mrnet COMMAND ...``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; commands: {', '.join(COMMANDS)} "
              "(mrnet --help)", file=sys.stderr)
        return 2
    return int(COMMANDS[command](rest) or 0)
