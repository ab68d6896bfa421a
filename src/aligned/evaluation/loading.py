"""The model an evaluation reads, and its data: a checkpoint (``ckpt_path``, ``compare_to``) or
a pretrained model as it is (``model=<group> data=<group>``), and the val or test loader of its
data module with the user's ``data.*`` overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from aligned.config import ConfigError, build, positive_int, target_parameters
from aligned.data.split_overlap import check_split_overrides
from aligned.training.checkpoints import RUNTIME_MODEL_KEYS, load_system, read_checkpoint
from aligned.training.system import LayerwiseClassifier

SPLITS = ("val", "test")
STANDARD_TARGET = "aligned.models.objectives.StandardObjective"

# evaluate.yaml's override stubs (null: keep the checkpoint's value); a model analysed as it is
# takes its groups' values, or the class defaults where a group sets none.
OVERRIDE_STUBS = {"model": ("name_or_path",), "data": ("data_dir", "batch_size")}


def evaluation_dataloader(run_config: dict, data_overrides: dict, split: str) -> Any:
    """The checkpoint's data module, with the user's overrides (e.g. another data_dir)."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got '{split}'.")
    data_cfg = dict(run_config["data"])
    overrides = {k: v for k, v in data_overrides.items() if v is not None}
    settings = data_settings(data_cfg["_target_"])
    unknown = sorted(set(overrides) - set(settings))
    if unknown:
        raise ConfigError(
            f"data.{unknown[0]}: this checkpoint's data ({data_cfg['_target_'].rsplit('.', 1)[-1]}"
            f") has no such setting; its settings: {', '.join(settings)}."
        )
    data_cfg.update(overrides)
    datamodule = build(OmegaConf.create(data_cfg))
    if data_overrides.get("batch_size") is not None and hasattr(datamodule, "eval_batch_size"):
        # Digits keeps its val/test batch size apart from training's; here the user means it.
        datamodule.eval_batch_size = positive_int("data.batch_size", data_overrides["batch_size"])
    datamodule.setup("validate" if split == "val" else "test")
    return datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()


def data_settings(target: str) -> list[str]:
    """The settings the data module takes (its constructor's parameters)."""
    return [p.name for p in target_parameters(target) or []]


@dataclass
class LoadedCheckpoint:
    """A checkpoint ready to analyse: its model, its run config, the data overrides it is
    evaluated with, and the HF model path it stored (None for a ViT)."""

    path: str
    run_config: dict
    system: LayerwiseClassifier
    data_overrides: dict
    model_path: str | None
    split_changes: dict = field(default_factory=dict)  # split settings changed by data.*
    pretrained: bool = False  # a model as it is (no ckpt_path): ``path`` names it


def load_for_evaluation(
    path: str, cfg: DictConfig, moved_from: str | None = None, key: str = "ckpt_path"
) -> LoadedCheckpoint:
    """``model.name_or_path`` replaces the HF model path ``moved_from`` (that of ``ckpt_path``'s
    model; None: this is it) wherever the checkpoint stored it: its model and, when it followed
    the model, its tokenizer."""
    # The weights live on in the model only.
    checkpoint = read_checkpoint(path, key=key)  # ``key``: the setting that named it
    run_config = checkpoint["run_config"]
    data_overrides = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") else {}
    if "_target_" in data_overrides:  # a data group (a pretrained model beside): its stubs only
        data_overrides = {key: data_overrides.get(key) for key in OVERRIDE_STUBS["data"]}
    new_path = (cfg.get("model") or {}).get("name_or_path")
    stored = checkpoint["hyper_parameters"]["model"].get("name_or_path")
    # How the blocks run (model.compile=false evaluates a model trained compiled, or the reverse).
    model_overrides = {key: (cfg.get("model") or {}).get(key) for key in RUNTIME_MODEL_KEYS}
    if new_path is not None and (moved_from is None or stored == moved_from):
        model_overrides["name_or_path"] = new_path  # load_system rejects it for a ViT
        if run_config["data"].get("tokenizer") == stored and not data_overrides.get("tokenizer"):
            data_overrides["tokenizer"] = new_path
    changes = check_split_overrides(run_config["data"], data_overrides,
                                    allowed=cfg.get("allow_other_split") is True)
    return LoadedCheckpoint(path, run_config, load_system(checkpoint, model_overrides),
                            data_overrides, stored, changes)


def pretrained_model(cfg: DictConfig) -> bool:
    """True when evaluate.py analyses a model as it is: a model group chosen, no ckpt_path."""
    return cfg.get("ckpt_path") is None and "_target_" in (cfg.get("model") or {})


def load_pretrained(cfg: DictConfig) -> LoadedCheckpoint:
    """A pretrained classifier with its own head, as ``model=<group> data=<group>`` build it:
    no training, the standard objective (the model's own head on the last layer, the same head
    read at every layer)."""
    if "_target_" not in (cfg.get("data") or {}):
        raise ConfigError(f"model={choice('model')} without a checkpoint needs the data it is "
                          "evaluated on too: add data=<group> (e.g. data=glue data.task=sst2).")
    sections = {}
    for name in ("model", "data"):
        section = OmegaConf.to_container(cfg[name], resolve=False)
        for key in OVERRIDE_STUBS[name]:
            if section.get(key) is None:
                section.pop(key, None)
        sections[name] = section
    plain = OmegaConf.create(sections)  # resolves ${data.num_classes} and the tokenizer path
    model, data = (OmegaConf.to_container(plain[name], resolve=True) for name in ("model", "data"))
    datamodule = build(OmegaConf.create(data))
    metrics = tuple(getattr(datamodule, "metrics", ("accuracy",)))
    system = LayerwiseClassifier(model, {"_target_": STANDARD_TARGET}, metrics=metrics).eval()
    names = {"model": choice("model"), "data": choice("data"), "loss": "pretrained"}
    label = model.get("name_or_path") or model.get("checkpoint_path") or model.get("name")
    run_config = {"model": model, "data": data, "loss": {"_target_": STANDARD_TARGET},
                  "names": names, "seed": None}
    return LoadedCheckpoint(str(label), run_config, system, {}, model.get("name_or_path"),
                            pretrained=True)


def choice(group: str) -> str | None:
    """The option chosen for a config group (model=minilm: 'minilm'), when Hydra ran."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return HydraConfig.get().runtime.choices.get(group)
    except ValueError:  # composed without Hydra's runtime config
        return None
