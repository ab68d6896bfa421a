"""The package layout: each package exports its public names, checkpoints and configs written
before the layout (their ``_target_`` strings name the old flat modules) still work, and the
repository cites only what its readers can open (docs/method.md by heading)."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, compose_evaluate, compose_train
from omegaconf import OmegaConf

from aligned.config import ConfigError, build
from aligned.evaluation import evaluate
from aligned.legacy import MOVED_MODULES, current_target, upgrade_targets
from aligned.training import train

# Written by train.py at the last commit before the layout (7386527), with
#   python train.py logger=none model.embed_dim=16 model.depth=2 model.num_heads=2
#       trainer.max_epochs=2
# Its results.json gave these test accuracies (56 and 53 of the 360 test images).
OLD_CHECKPOINT = ROOT / "tests" / "fixtures" / "digits_vit_before_layout.ckpt"
OLD_SETTINGS = ["logger=none", "model.embed_dim=16", "model.depth=2", "model.num_heads=2"]
OLD_TEST_ACCURACY = [56 / 360, 53 / 360]
OLD_TARGETS = {"aligned.backbones.timm_vit.TimmViT", "aligned.objectives.AlignedObjective"}

# What a reader of the repository can open: no private notes (METHOD.md), no tracker numbers.
READER_FACING = ("src", "conf", "benchmarks", "docs", "README.md")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".ipynb", ".json", ".toml", ".txt"}
ISSUE_NUMBER = re.compile(r"\bissues? #?\d+", re.IGNORECASE)
# docs/method.md, "Heading" (in a docstring, or a YAML comment wrapped onto the next line), or
# several: docs/method.md, "Heading", "Other heading".
METHOD_CITATION = re.compile(r'docs/method\.md,((?:[\s#]*"[^"\n]+",?)+)')
METHOD_LINK = re.compile(r"\((?:docs/)?method\.md#([\w-]+)\)")

PACKAGES = ("aligned.models", "aligned.data", "aligned.training", "aligned.analysis",
            "aligned.early_exit")


def env() -> dict:
    return {**os.environ, "PYTHONWARNINGS": "ignore"}


@pytest.mark.parametrize("package", [p for p in PACKAGES if p != "aligned.data"])
def test_every_package_exports_what_its_all_names(package):
    """__all__ names only what the package gives (getattr raises on a stale name) and every
    public name the package binds (a submodule aside)."""
    module = importlib.import_module(package)
    exported = set(module.__all__)
    for name in exported:
        getattr(module, name)
    bound = {name for name, value in vars(module).items()
             if not name.startswith("_") and not inspect.ismodule(value)
             and getattr(value, "__module__", None) not in ("typing", "__future__")}
    assert bound <= exported, f"{package} binds names its __all__ leaves out: {bound - exported}"


@pytest.mark.slow
def test_a_vit_never_imports_transformers():
    code = ("import sys; from aligned.models import TimmViT, AlignedObjective; "
            "print('transformers' in sys.modules)")  # (lightning itself imports it)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env())
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"


def test_every_moved_module_maps_to_a_module_that_exists():
    for new in MOVED_MODULES.values():
        importlib.import_module(new)
    assert current_target("aligned.backbones.timm_vit.TimmViT") == \
        "aligned.models.backbones.timm_vit.TimmViT"
    assert current_target("aligned.exit.load_early_exit") == \
        "aligned.early_exit.inference.load_early_exit"
    # Today's names stay as they are, also where an old module is now a package of that name.
    for today in ("aligned.training.system.LayerwiseClassifier", "aligned.training.train",
                  "aligned.analysis.linear_cka", "lightning.pytorch.Trainer"):
        assert current_target(today) == today
    assert current_target("aligned.analysis.offdiagonal") == \
        "aligned.analysis.readouts.offdiagonal"  # old aligned/analysis.py, not exported


def test_upgrade_targets_returns_a_new_config_and_leaves_the_input_alone():
    old = {"model": {"_target_": "aligned.backbones.timm_vit.TimmViT", "depth": 2},
           "list": [{"_target_": "aligned.objectives.StandardObjective"}], "seed": 0}
    before = json.dumps(old)
    new = upgrade_targets(old)
    assert new["model"] == {"_target_": "aligned.models.backbones.timm_vit.TimmViT", "depth": 2}
    assert new["list"][0]["_target_"] == "aligned.models.objectives.StandardObjective"
    assert json.dumps(old) == before


def test_a_config_naming_an_old_module_gets_its_new_path():
    node = OmegaConf.create({"_target_": "aligned.objectives.AlignedObjective", "num_layers": 2})
    with pytest.raises(ConfigError, match="moved to aligned.models.objectives.AlignedObjective"):
        build(node)


def test_the_old_checkpoint_really_names_the_old_modules():
    stored = torch.load(OLD_CHECKPOINT, map_location="cpu", weights_only=False)
    targets = {section.get("_target_") for section in stored["hyper_parameters"].values()
               if isinstance(section, dict)}
    assert targets >= OLD_TARGETS


def test_a_checkpoint_from_before_the_layout_loads_and_evaluates(tmp_path):
    from aligned.early_exit import load_early_exit
    from aligned.training import load_system, read_checkpoint

    system = load_system(read_checkpoint(OLD_CHECKPOINT))
    assert type(system.backbone).__module__ == "aligned.models.backbones.timm_vit"
    classifier = load_early_exit(OLD_CHECKPOINT, "confidence", 1.0)  # never exits early
    images = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        expected = system(images)[-1].argmax(-1)  # the last layer's prediction
    result = classifier(images)
    np.testing.assert_array_equal(result.exit_layers, [2, 2, 2, 2])
    np.testing.assert_array_equal(result.predictions, expected)

    evaluation = evaluate(compose_evaluate([f"ckpt_path={OLD_CHECKPOINT}"], tmp_path / "eval"))
    np.testing.assert_allclose(evaluation["layer_accuracy"], OLD_TEST_ACCURACY, atol=1e-6)
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["layer_accuracy"] \
        == evaluation["layer_accuracy"]


def test_a_checkpoint_from_before_the_layout_resumes(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(OLD_CHECKPOINT, run_dir / "checkpoints" / "last.ckpt")
    overrides = [*OLD_SETTINGS, "trainer.max_epochs=3", "+trainer.enable_progress_bar=false"]
    train(compose_train([*overrides, f"resume={run_dir}"], tmp_path / "session"))
    resumed = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                         weights_only=False)
    assert resumed["epoch"] == 2  # the old run's two epochs, then one more
    assert resumed["hyper_parameters"]["model"]["_target_"] == \
        "aligned.models.backbones.timm_vit.TimmViT"
    assert json.loads((run_dir / "results.json").read_text())["num_layers"] == 2


def reader_facing_files() -> list:
    files = []
    for name in READER_FACING:
        path = ROOT / name
        found = [path] if path.is_file() else sorted(path.rglob("*"))
        files += [f for f in found if f.is_file() and f.suffix in TEXT_SUFFIXES
                  and not any(part.endswith(".egg-info") or part == "__pycache__"
                              for part in f.parts)]
    return files


def method_headings() -> set[str]:
    text = (ROOT / "docs" / "method.md").read_text(encoding="utf-8")
    return {line.lstrip("#").strip() for line in text.splitlines() if line.startswith("## ")}


def cited_headings(text: str) -> list[str]:
    return [heading for group in METHOD_CITATION.findall(text)
            for heading in re.findall(r'"([^"]+)"', group)]


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_nothing_cites_the_private_method_notes_or_an_issue_number():
    files = reader_facing_files()
    assert ROOT / "README.md" in files and ROOT / "docs" / "method.md" in files
    offending = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "METHOD.md" in line or ISSUE_NUMBER.search(line):
                offending.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offending, "\n".join(offending)


def test_the_citation_patterns_find_what_they_should():
    assert cited_headings('(docs/method.md, "Objectives").') == ["Objectives"]
    assert cited_headings('docs/method.md,\n"Claims", "Early exit")') == ["Claims", "Early exit"]
    assert cited_headings('# setup (docs/method.md,\n# "The paper\'s numbers")') == \
        ["The paper's numbers"]
    assert cited_headings("see docs/method.md for the method") == []
    assert ISSUE_NUMBER.search("as Issue #17 asked") and ISSUE_NUMBER.search("(issues 17, 18)")
    assert not ISSUE_NUMBER.search("the issue's bar, 17 points")
    assert anchor("The paper's numbers") == "the-papers-numbers"
    assert anchor("Layer-wise read-outs") == "layer-wise-read-outs"


def test_every_citation_of_the_method_names_one_of_its_headings():
    headings = method_headings()
    assert {"The shared head", "Objectives", "Similarity measures", "Claims",
            "The paper's numbers"} <= headings
    cited, unknown = 0, []
    for path in reader_facing_files():
        if path.parts[len(ROOT.parts)] not in ("src", "conf"):
            continue
        for heading in cited_headings(path.read_text(encoding="utf-8")):
            cited += 1
            if heading not in headings:
                unknown.append(f"{path.relative_to(ROOT)}: {heading!r}")
    assert cited >= 10  # the code cites the method in every module that implements a part of it
    assert not unknown, f"headings not in docs/method.md {sorted(headings)}: {unknown}"
    anchors = {anchor(heading) for heading in headings}
    links = [(path, link) for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
             for link in METHOD_LINK.findall(path.read_text(encoding="utf-8"))]
    assert links
    assert not [f"{path.name}: #{link}" for path, link in links if link not in anchors]
