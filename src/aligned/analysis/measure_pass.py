"""The similarity measures an evaluation asks for beyond COS and CKA (``similarity.measures``),
fed batch by batch from the same pass as COS and CKA, within one model or across two.

- covariance-based (``cca``, ``svcca``, ``pwcca``, ``procrustes``): one CovarianceAccumulator
  over all batches, so every sample counts and memory is (L·D)² floats, never N²;
- sample-based (``rbf_cka``: N×N Gram matrices; ``mutual_knn``: each sample's neighbours among
  all others): the features of the first ``max_samples`` samples, recorded as ``samples``.
"""

from __future__ import annotations

from typing import Any

import torch

from aligned.analysis.cca import canonical_similarity
from aligned.analysis.covariance import CovarianceAccumulator
from aligned.analysis.measures import MEASURES, get_measure
from aligned.analysis.procrustes import procrustes_from_covariances
from aligned.config import ConfigError

IN_THE_PASS = ("cos", "cka")  # always computed: the layer-wise readouts are built on them
FROM_COVARIANCES = ("cca", "svcca", "pwcca", "procrustes")


class ExtraMeasures:
    """``update(features (L, B, D)[, other (L_B, B, D_B)])`` per batch, then ``compute()``:
    name -> (L, L) or (L, L_B) matrix as nested lists."""

    def __init__(self, names: list[str] | tuple[str, ...], max_samples: int = 5000) -> None:
        for name in names:
            get_measure(name)  # one clear error for an unknown name
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 4:
            raise ConfigError(f"similarity.max_samples must be an integer >= 4, got "
                              f"{max_samples!r}.")
        self.names = [name for name in dict.fromkeys(names) if name not in IN_THE_PASS]
        self.max_samples = max_samples
        needs_covariances = any(name in FROM_COVARIANCES for name in self.names)
        self.covariances = CovarianceAccumulator() if needs_covariances else None
        self.sampled = [name for name in self.names if name not in FROM_COVARIANCES]
        self.kept: list[list[torch.Tensor]] = [[], []]  # per stack, (L, b, D) chunks
        self.num_kept = 0

    def update(self, features: torch.Tensor, other: torch.Tensor | None = None) -> None:
        if self.covariances is not None:
            self.covariances.update(features, other)
        room = self.max_samples - self.num_kept
        if self.sampled and room > 0:
            for stack, batch in enumerate((features, other)):
                if batch is not None:
                    self.kept[stack].append(batch[:, :room].detach().clone())
            self.num_kept += min(room, features.shape[1])

    def compute(self) -> dict[str, Any]:
        """Each measure's matrix, and what it means and was computed from (``about``)."""
        matrices, about = {}, {}
        stacks = [torch.cat(chunks, 1) if chunks else None for chunks in self.kept]
        for name in self.names:
            measure = MEASURES[name]
            if name == "procrustes":
                matrix = procrustes_from_covariances(self.covariances)
            elif name in FROM_COVARIANCES:
                matrix = canonical_similarity(self.covariances, name,
                                              **({"variance": 0.99} if name == "svcca" else {}))
            else:
                matrix = measure.compute(stacks[0], stacks[1])
            matrices[name] = matrix.cpu().tolist()
            about[name] = {
                "kind": measure.kind, "source": measure.source,
                "samples": (self.covariances.num_samples if name in FROM_COVARIANCES
                            else self.num_kept),
            }
        return {"matrices": matrices, "about": about}
