"""Do the demo's headline numbers hold? The default pipeline over several seeds, bf16 and fp32.

    python benchmarks/seeds.py                                # train.seed 0 1 2, bf16 and fp32
    python benchmarks/seeds.py --seeds 0 1 2 3 --precisions fp32
    python benchmarks/seeds.py --workdir runs/seeds           # keep the repository it ran in
    python benchmarks/seeds.py --set synthesize.n_train=40 --set train.epochs=2   # a quick look

It clones the project's last commit into a work folder and runs, for every value of
``train.seed`` and every precision, ``dvc exp run -S train.seed=N -S train.precision=P
evaluate``: the committed ``params.yaml`` with those two keys (and any ``--set``) changed,
every stage up to the evaluation. The data stages do not read either key, so DVC runs them once. Each run's metrics,
probability tables and checkpoints' learning curves are copied out before the next.

With ``--workdir``, a run whose results are already there (from the same commit with the same
overrides) is read back instead of rerun: an interrupted sweep resumes, and runs made in several
work folders at once (say one per core, each with ``OMP_NUM_THREADS=1``) can be copied into one
``results/`` folder and summarised together.

It prints:
- per run, the models that miss the learning bars of ``mrnet.evaluation.learning``: AUC on
  their own un-augmented train exams below 0.85, a train loss that never fell to 0.8x the
  constant-output loss, or a probability spread (sd over train exams) below 0.05;
- per task and precision, the ensemble's valid AUC and its sensitivity and specificity at the
  operating point (chosen on train), as mean ± sd over the seeds;
- per task, the share of valid exams whose call at the operating point is the same in bf16 and
  fp32 (pooled over seeds).

It is a measurement, not a test: nothing is asserted. On a CPU without bf16 instructions,
``train.precision: bf16`` is emulated (slower, the same numbers as native bf16 up to the
order of float operations); the header says which.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np

from mrnet import TASKS
from mrnet.core.runtime import cpu_has_bf16
from mrnet.core.stats import auc, binary_metrics
from mrnet.core.tables import read_probs
from mrnet.evaluation.learning import Learning, learning_table
from mrnet.evaluation.metrics import operating_point


def sh(cmd: list[str], cwd: Path, log: Path) -> None:
    """Run ``cmd`` in ``cwd``, its output appended to ``log``; exit with its tail on failure."""
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-20:]
        sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode}); the end of {log}:\n"
                 + "\n".join(tail))


def collect(repo: Path, out: Path, run: dict, seconds: float) -> dict:
    """Copy one run's metrics and ensemble tables to ``out``; return its figures.

    ``run`` (the commit and the overrides) and the run's wall time are stored with them, so that
    :func:`earlier` can tell whether they answer the same question.
    """
    out.mkdir(parents=True, exist_ok=True)
    multitask = repo / "models" / "multitask"  # absent with -S multitask.enabled=false
    result: dict = {"run": run, "seconds": round(seconds), "tasks": {}, "learning": learning_table(
        repo / "data" / "probs", repo / "models",
        multitask if (multitask / "model.pt").exists() else None)}
    for task in TASKS:
        table = read_probs(repo / "data" / "probs" / f"ensemble-{task}.csv")
        shutil.copy(repo / "data" / "probs" / f"ensemble-{task}.csv", out)
        shutil.copy(repo / "metrics" / f"{task}.json", out)
        threshold, _ = operating_point(table)
        valid = table[table["split"] == "valid"].sort_values("case_id")
        labels, probs = valid["label"].to_numpy(), valid["prob"].to_numpy()
        at_op = binary_metrics(labels, probs, threshold)
        result["tasks"][task] = {
            "auc": auc(labels, probs), "sensitivity": at_op["sensitivity"],
            "specificity": at_op["specificity"], "threshold": threshold,
            "case_ids": valid["case_id"].tolist(), "calls": (probs >= threshold).tolist()}
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def earlier(out: Path, run: dict) -> dict | None:
    """The figures :func:`collect` stored in ``out`` for the same ``run``, else None."""
    path = out / "result.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    if result.get("run") != run:
        return None
    result["learning"] = [Learning(*row) for row in result["learning"]]
    return result


def mean_sd(values: list[float]) -> str:
    """``mean ± sd`` (sample sd) of ``values``; one value alone has no sd, so it is printed bare."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 1:
        return f"{arr[0]:.3f}"
    return f"{arr.mean():.3f} ± {float(arr.std(ddof=1)):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp32"],
                        choices=["bf16", "fp32"])
    parser.add_argument("--workdir", type=Path, help="keep the cloned repository and results")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="another params.yaml override for every run (repeatable)")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="seeds-"))
    work.mkdir(parents=True, exist_ok=True)
    repo, log = work / "repo", work / "seeds.log"
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    if not repo.exists():
        sh(["git", "clone", "--quiet", str(ROOT), str(repo)], work, log)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, text=True,
                            capture_output=True, check=True).stdout.strip()
    print(f"commit {commit}; seeds {args.seeds}; precisions {args.precisions}; "
          f"other overrides {args.set or 'none'}; "
          f"bf16 on this CPU: {'native' if cpu_has_bf16() else 'emulated'}; log {log}",
          flush=True)

    results: dict[tuple[str, int], dict] = {}
    for precision in args.precisions:
        for seed in args.seeds:
            start = time.perf_counter()
            sets = [f"train.seed={seed}", f"train.precision={precision}", *args.set]
            out, run = work / "results" / f"{precision}-seed{seed}", {"commit": commit,
                                                                       "sets": sets}
            res = earlier(out, run)
            took = "read back"
            if res is None:
                sh(["dvc", "exp", "run", "--quiet", *[a for kv in sets for a in ("-S", kv)],
                    "evaluate"], repo, log)
                res = collect(repo, out, run, time.perf_counter() - start)
                took = "this run"
            results[(precision, seed)] = res
            missed = [f"{row.model} ({', '.join(row.misses())})" for row in res["learning"]
                      if row.misses()]
            aucs = ", ".join(f"{t} {res['tasks'][t]['auc']:.3f}" for t in TASKS)
            print(f"{precision} seed {seed}: {aucs} ({res['seconds']} s, {took}); "
                  f"models below the learning bars: {'; '.join(missed) or 'none'}", flush=True)

    print("\nensemble on valid, mean ± sd over seeds "
          "(AUC; sensitivity and specificity at the operating point)")
    for task in TASKS:
        for precision in args.precisions:
            runs = [results[(precision, s)]["tasks"][task] for s in args.seeds]
            print(f"{task:9s} {precision}  AUC {mean_sd([r['auc'] for r in runs])}  "
                  f"sens {mean_sd([r['sensitivity'] for r in runs])}  "
                  f"spec {mean_sd([r['specificity'] for r in runs])}")
    if set(args.precisions) == {"bf16", "fp32"}:
        print("\ncalls at the operating point that agree between bf16 and fp32 (valid exams)")
        for task in TASKS:
            same = total = 0
            for seed in args.seeds:
                a, b = (results[(p, seed)]["tasks"][task] for p in ("bf16", "fp32"))
                assert a["case_ids"] == b["case_ids"]
                same += int(np.sum(np.asarray(a["calls"]) == np.asarray(b["calls"])))
                total += len(a["calls"])
            print(f"{task:9s} {same}/{total} = {same / total:.1%}")


if __name__ == "__main__":
    main()
