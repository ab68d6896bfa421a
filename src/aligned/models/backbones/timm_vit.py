"""timm Vision Transformers (ViT, DeiT; CLS-token and avg-pool) behind the layer-wise surface."""

from __future__ import annotations

from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from aligned.config import ConfigError, number
from aligned.models.backbones.base import BlockState, LayerwiseBackbone
from aligned.models.backbones.compilation import compile_blocks

# timm's dropout settings: probabilities (drop_path_rate: of skipping a block), checked here
# because timm only fails on them in the first training step.
DROP_RATES = ("drop_rate", "pos_drop_rate", "patch_drop_rate", "proj_drop_rate",
              "attn_drop_rate", "drop_path_rate")


class TimmViT(LayerwiseBackbone):
    """Any timm ``VisionTransformer``, built with ``timm.create_model``.

    Per layer l the feature is ``forward_head(norm(block_l output), pre_logits=True)``: the final
    norm, then CLS or average pooling, then ``fc_norm`` (where avg-pool models keep their norm)
    and ``head_drop``. The shared head is the model's own ``head`` linear layer.

    ``checkpoint_path`` loads the pretrained weights from a local file instead of the hub (offline
    use); as with hub weights, the classifier is re-initialised when the class count differs;
    extra keyword arguments go to ``timm.create_model`` (e.g. depth, embed_dim, patch_size).
    ``compile=True`` compiles each block with ``torch.compile`` (``compile_backend``).
    """

    inputs = "images"  # what it reads; train.py checks that model and data agree

    def __init__(
        self,
        name: str,
        num_classes: int,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        img_size: int | None = None,
        in_chans: int = 3,
        compile: bool = False,
        compile_backend: str = "inductor",
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        # "local-dir:<dir>" / "hf-hub:<id>": a model saved by timm (save_for_hf, aligned.export)
        if not timm.is_model(name) and not name.startswith(("local-dir:", "hf-hub:")):
            raise ConfigError(
                f"Unknown timm model '{name}'. Pick a Vision Transformer name from "
                "timm.list_models('vit_*') or timm.list_models('deit_*'), "
                "e.g. vit_small_patch16_224."
            )
        for key in DROP_RATES:
            if key in timm_kwargs:
                timm_kwargs[key] = number(f"model.{key}", timm_kwargs[key], 0, 1, high_open=True)
        if img_size is not None:
            timm_kwargs["img_size"] = img_size
        if checkpoint_path is not None:
            timm_kwargs["pretrained_cfg_overlay"] = {"file": str(checkpoint_path)}
            pretrained = True
        settings = dict(num_classes=num_classes, in_chans=in_chans, **timm_kwargs)
        try:
            if pretrained:
                # Check the tiling before loading weights: otherwise timm fails resampling the
                # position embedding, in an error that reads like a failed download.
                with torch.device("meta"):
                    check_patches(timm.create_model(name, pretrained=False, **settings))
            self.model = timm.create_model(name, pretrained=pretrained, **settings)
        except (AssertionError, TypeError) as error:  # timm's checks of its arguments
            raise ConfigError(
                f"timm cannot build '{name}' with these model settings: {error}."
            ) from None
        except (OSError, RuntimeError) as error:
            if not pretrained:
                raise
            raise ConfigError(
                f"Could not load pretrained weights for timm model '{name}' ({error}). "
                "Without internet access, download the weights elsewhere and set "
                "model.checkpoint_path=/path/to/weights (.safetensors, .pth or .bin)."
            ) from None
        if type(self.model) is not VisionTransformer:
            raise ConfigError(
                f"timm model '{name}' is a {type(self.model).__name__}; the layer-wise surface "
                "supports timm VisionTransformer models (ViT, DeiT without distillation token)."
            )
        check_patches(self.model)
        self.num_layers = len(self.model.blocks)
        if self.num_layers < 1:
            raise ConfigError(f"timm model '{name}' has no blocks; set model.depth >= 1.")
        self.feature_dim = self.model.num_features
        self.num_classes = num_classes
        self.in_chans = in_chans
        if compile:
            compile_blocks(self.model.blocks, compile_backend)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch + position embedding: the tokens block 1 reads, (B, N, D)."""
        m = self.model
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(images))))

    def readout(self, tokens: torch.Tensor) -> torch.Tensor:
        """What the classifier reads from a block's tokens (B, N, D) -> (B, D)."""
        m = self.model
        if m.global_pool == "token" and m.attn_pool is None:
            # forward_head's pooling, spelled out: the CLS token, final norm, fc_norm, head_drop.
            # The norm is per token, so normalising the CLS token alone gives the same feature
            # for 1/N of the work; skipping forward_head's calls (and head_drop, a no-op in eval)
            # cuts the read-out's cost at batch 1 from ~18 to ~12 us, paid after every block in
            # early exit. The golden tests hold this to timm's own forward.
            features = m.fc_norm(m.norm(tokens[:, 0]))
            return m.head_drop(features) if self.training else features
        return m.forward_head(m.norm(tokens), pre_logits=True)

    def begin(self, images: torch.Tensor) -> BlockState:
        self.check_images(images)
        # Float images of another precision (float64 from numpy, float16) are cast to the
        # weights' dtype, as the layers would need; a new tensor, the caller's stays as it is.
        dtype = next(self.model.patch_embed.parameters()).dtype
        return BlockState(self.embed(images.to(dtype)))

    def image_size(self) -> tuple[int, int] | None:
        """(H, W) the model reads, or None when it takes any size (dynamic_img_size/pad)."""
        embed = self.model.patch_embed
        flexible = getattr(embed, "dynamic_img_size", False) or getattr(embed, "dynamic_img_pad",
                                                                        False)
        return None if flexible or embed.img_size is None else tuple(embed.img_size)

    def check_images(self, images: Any) -> None:
        """One clear error for inputs the patch embedding would reject from deep inside."""
        if not isinstance(images, torch.Tensor):
            raise ConfigError(
                f"Expected an image tensor (B, C, H, W), got a {type(images).__name__} (from a "
                "loader batch (images, labels), pass the images).")
        size = self.image_size()
        wrong_size = size is not None and tuple(images.shape[2:]) != size
        if (images.ndim != 4 or images.shape[1] != self.in_chans or wrong_size
                or not images.is_floating_point()):
            built_for = (f" = (B, {self.in_chans}, {size[0]}, {size[1]}), the size the model "
                         "was built for (model.img_size)" if size else "")
            raise ConfigError(
                f"Expected float images (B, {self.in_chans}, H, W){built_for}, preprocessed as "
                "the data module does (a batch of its test_dataloader()); got "
                f"{tuple(images.shape)} {images.dtype}."
            )

    def run_block(self, layer: int, state: BlockState) -> BlockState:
        return BlockState(self.model.blocks[layer - 1](state.tokens))  # (B, N, D)

    def read(self, state: BlockState) -> torch.Tensor:
        return self.readout(state.tokens)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.head(features)

    def head_parameters(self) -> int:
        return sum(p.numel() for p in self.model.head.parameters())


def check_patches(model: VisionTransformer) -> None:
    """Patches must tile the image: timm would drop the border pixels, or fail inside the first
    batch for a patch larger than the image."""
    embed = getattr(model, "patch_embed", None)
    if embed is None:  # not a ViT: the type check says so
        return
    flexible = getattr(embed, "dynamic_img_size", False) or getattr(embed, "dynamic_img_pad", False)
    if embed.img_size is None or flexible:
        return
    if any(size % patch for size, patch in zip(embed.img_size, embed.patch_size, strict=True)):
        raise ConfigError(
            f"Patches of {embed.patch_size[0]} pixels do not tile images of {embed.img_size[0]} "
            "(model.img_size, from data.image_size): resize the images (data.image_size) to a "
            "multiple of the patch size, or pick a patch size that divides it (model.patch_size)."
        )
