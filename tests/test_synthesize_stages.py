"""The synthesize stages keep the previous dataset until the new one is complete.

A stage killed (or failing) while it writes phantoms must leave the dataset that was there,
whole: the new one is built beside it and swapped in at the end (:func:`mrnet.core.io.atomic_dir`),
and nothing is deleted before.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml
from helpers import raw_params

import mrnet.data.synthetic
import mrnet.kneemri.synthetic
import stages.kneemri.synthesize
import stages.synthesize
from mrnet.core.errors import ParamsError


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(folder).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def write_params(project: Path, raw: dict) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump(raw))


def fail_after(monkeypatch: pytest.MonkeyPatch, module: object, name: str, n: int) -> None:
    """Make ``module.name`` raise on its (n+1)-th call, as a kill part-way through would stop."""
    real, calls = getattr(module, name), []

    def render(*args, **kwargs):
        if len(calls) >= n:
            raise RuntimeError("killed while writing phantoms")
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, render)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    raw = raw_params()
    raw["synthesize"].update(n_train=8, n_valid=4, image_size=32, slices_min=2, slices_max=3)
    raw["kneemri"].update(enabled=True)
    raw["kneemri"]["synthetic"].update(exams_per_folder=3, image_size=32, slices_min=2,
                                       slices_max=3)
    write_params(tmp_path, raw)
    monkeypatch.chdir(tmp_path)
    return tmp_path, raw


def test_failed_mrnet_synthesize_keeps_the_previous_dataset(project, monkeypatch) -> None:
    tmp, raw = project
    stages.synthesize.main()
    out = tmp / raw["synthesize"]["out"]
    before = digest(out)
    raw["synthesize"]["seed"] = 1  # the next run writes a different dataset...
    write_params(tmp, raw)
    fail_after(monkeypatch, mrnet.data.synthetic, "render_exam", 3)  # ...and dies in it
    with pytest.raises(RuntimeError, match="killed"):
        stages.synthesize.main()
    assert digest(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary left


def test_synthesize_swaps_a_note_for_the_dataset_only_when_it_is_written(project) -> None:
    tmp, raw = project
    out = tmp / raw["synthesize"]["out"]
    raw["data"]["root"] = str(tmp / "elsewhere" / "MRNet-v1.0")
    write_params(tmp, raw)
    stages.synthesize.main()
    assert sorted(p.name for p in out.iterdir()) == ["README.txt"]
    raw["data"]["root"] = "data/synthetic/MRNet-v1.0"
    write_params(tmp, raw)
    stages.synthesize.main()
    assert sorted(p.name for p in out.iterdir()) == ["MRNet-v1.0"]  # the stale note went


def test_synthesize_refuses_an_output_inside_the_dataset(project) -> None:
    tmp, raw = project
    raw["data"]["root"] = str(tmp / "MRNet")
    raw["synthesize"]["out"] = str(tmp / "MRNet" / "phantoms")
    write_params(tmp, raw)
    with pytest.raises(ParamsError, match=r"synthesize\.out .* lies inside the dataset"):
        stages.synthesize.main()


def test_failed_kneemri_synthesize_keeps_the_previous_phantoms(project, monkeypatch) -> None:
    tmp, raw = project
    stages.kneemri.synthesize.main()
    out = tmp / raw["kneemri"]["synthetic"]["out"]
    before = digest(out)
    raw["kneemri"]["synthetic"]["seed"] = 1
    write_params(tmp, raw)
    fail_after(monkeypatch, mrnet.kneemri.synthetic, "render_series", 5)
    with pytest.raises(RuntimeError, match="killed"):
        stages.kneemri.synthesize.main()
    assert digest(out) == before
