"""A trained checkpoint as a standard model the usual libraries load and serve.

    python -m aligned.export <run>/checkpoints/last.ckpt <out dir>

- BERT-family (HFEncoder): a Hugging Face directory (``save_pretrained``: config.json,
  model.safetensors, and the tokenizer when its files are on this machine), loadable with
  ``AutoModelForSequenceClassification.from_pretrained(<out dir>)``.
- causal LMs (HFDecoder: GPT-2, LLaMA, SmolLM2, a model=llama built from scratch): a Hugging Face
  directory loadable with ``AutoModelForCausalLM.from_pretrained(<out dir>)``, with the
  tokenizer (a trained one is read from the checkpoint itself), so ``generate`` runs on it.
- timm ViT (TimmViT): timm's own export (``timm.models.save_for_hf``: config.json with the
  architecture and its arguments, model.safetensors), loadable with
  ``timm.create_model("local-dir:<out dir>", pretrained=True)``.

The exported model's logits are the checkpoint's last-layer logits. With a shared head
(loss=aligned or standard) its own classifier is that head, so applying it to any layer's
feature (``output_hidden_states=True`` / ``forward_intermediates``) gives the early exits too;
the per-layer heads of loss=multiexit are not part of a standard model and are not exported.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from aligned.arguments import output_problem
from aligned.config import ConfigError, user_message
from aligned.data.trained_tokenizer import checkpoint_tokenizer
from aligned.hub import gguf_location
from aligned.training.checkpoints import load_system, read_checkpoint
from aligned.training.json_files import write_json
from aligned.training.system import LayerwiseClassifier

MULTIEXIT = "aligned.models.objectives.MultiExitObjective"


def export_system(system: LayerwiseClassifier, out_dir: str | Path,
                  tokenizer: Any | None = None) -> str:
    """Write ``system``'s backbone to ``out_dir`` in its library's format; returns the format
    (transformers or timm). ``tokenizer``: a tokenizer, or where to load one from."""
    from aligned.models.backbones.hf_decoder import HFDecoder
    from aligned.models.backbones.hf_encoder import HFEncoder
    from aligned.models.backbones.timm_vit import TimmViT

    out = check_export_directory(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backbone = system.backbone
    if isinstance(backbone, (HFEncoder, HFDecoder)):
        backbone.model.save_pretrained(out)
        if tokenizer is not None:
            save_tokenizer(tokenizer, out)
        return "transformers"
    if isinstance(backbone, TimmViT):
        import timm.models

        timm.models.save_for_hf(backbone.model, str(out), safe_serialization=True)
        return "timm"
    raise ConfigError(f"Export supports HFEncoder, HFDecoder and TimmViT backbones, not "
                      f"{type(backbone).__name__}.")


def check_export_directory(out_dir: str | Path) -> Path:
    """``out_dir`` as a Path, or a ConfigError unless it is a new or empty directory that can be
    made: checked before the checkpoint loads, not after."""
    out = Path(out_dir).expanduser()
    problem = output_problem(out, directory=True)
    if problem:
        raise ConfigError(f"Export directory '{out}' {problem}; give a new or empty directory.")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"Export directory '{out}' is not empty; give a new or empty one.")
    return out


def save_tokenizer(name_or_path: Any, out: Path) -> None:
    """The tokenizer beside the model, so the directory is complete; skipped with a warning
    when its files are not on this machine (the checkpoint stores the training machine's path)."""
    from transformers import AutoTokenizer

    if not isinstance(name_or_path, str):  # a tokenizer itself (trained with the run)
        name_or_path.save_pretrained(out)
        return
    try:  # a .gguf file (model=smollm2) holds its tokenizer: read it with gguf_file=
        directory, gguf = gguf_location(name_or_path)
        AutoTokenizer.from_pretrained(directory, **gguf).save_pretrained(out)
    except (OSError, ValueError, ConfigError) as error:
        print(f"Warning: the tokenizer '{name_or_path}' could not be loaded here "
              f"({str(error).splitlines()[0]}); the export holds the model only: save the "
              "tokenizer into it with AutoTokenizer.from_pretrained(...).save_pretrained(dir).",
              file=sys.stderr)


def export(ckpt_path: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Export the checkpoint at ``ckpt_path``; returns what was written (also in export.json)."""
    check_export_directory(out_dir)
    checkpoint = read_checkpoint(ckpt_path, key="the checkpoint")
    system = load_system(checkpoint)
    run_config = checkpoint.get("run_config", {})
    tokenizer = checkpoint_tokenizer(checkpoint) or (run_config.get("data") or {}).get("tokenizer")
    export_format = export_system(system, out_dir, tokenizer)
    loss = checkpoint["hyper_parameters"]["loss"]["_target_"]
    record = {
        "checkpoint": str(Path(ckpt_path).resolve()),
        "names": run_config.get("names", {}),
        "num_layers": system.num_layers,
        "format": export_format,
        "shared_head": loss != MULTIEXIT,  # its classifier reads every layer
        "causal_lm": system.next_token,
    }
    write_json(Path(out_dir) / "export.json", record, "export record")
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt_path", help="a checkpoint written by train.py")
    parser.add_argument("out_dir", help="a new (or empty) directory")
    args = parser.parse_args(argv)
    try:
        record = export(args.ckpt_path, args.out_dir)
    except ConfigError as error:
        print(f"Error: {user_message(error)}", file=sys.stderr)
        sys.exit(2)
    how = "timm.create_model('local-dir:...', pretrained=True)"
    if record["format"] == "transformers":
        how = ("AutoModelForCausalLM" if record["causal_lm"] else
               "AutoModelForSequenceClassification") + ".from_pretrained"
    print(f"Exported {record['num_layers']} layers to {args.out_dir} ({record['format']}; load "
          f"with {how}).")
    if not record["shared_head"]:
        print("loss=multiexit: the per-layer heads are not part of a standard model; the export "
              "keeps the last layer's classifier.")


if __name__ == "__main__":
    main()
