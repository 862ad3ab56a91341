"""Cheap upper-part training: run the frozen lower part once per augmented view, then train only the upper part.

When the lower units are frozen (fixed weights, BN in inference mode) their output for a given augmented image
never changes, so recomputing it every step is wasted work — often most of the step. We compute the activations at
the freeze boundary for K augmented views of every training image (one plain view of val/test), keep them as fp16
(in RAM, or in a memory-mapped file on disk beyond a budget) and train only the upper part on them, each sample
drawing one of its K views at random every epoch. The price: augmentation diversity is limited to K views and the
upper part sees fp16-rounded inputs; ``bench/finetune.py`` measures time and accuracy against the plain loop.

Splitting needs the body to be a plain chain of modules up to the cut point (EfficientNet, MobileNet, ResNet,
ConvNeXt are). The chain is checked numerically against the network's own forward and refused otherwise.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from transferlab.errors import TransferlabError
from transferlab.finetune.blocks import Unit
from transferlab.finetune.data import evaluation_loader, training_loader
from transferlab.finetune.engine import StagePlan
from transferlab.finetune.network import FinetuneNet
from transferlab.finetune.options import FinetuneOptions

DEFAULT_MEMORY_BUDGET = 512 * 2**20
"""Stores larger than this (bytes, fp16) go to a memory-mapped file in the run directory instead of RAM."""


def _flatten(module: nn.Module, prefix: str = "") -> list[str]:
    names: list[str] = []
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        names += _flatten(child, full + ".") if isinstance(child, nn.Sequential) else [full]
    return names


def run_chain(body: nn.Module, names: list[str], x: torch.Tensor) -> torch.Tensor:
    """Apply the named submodules of ``body`` in order, looked up at call time.

    Looking them up (rather than holding module objects) matters: freezing swaps BatchNorm modules for
    FrozenBatchNorm2d and unfreezing swaps them back, so a held reference would go stale between stages.
    """
    for name in names:
        x = body.get_submodule(name)(x)
    return x


@torch.no_grad()
def feature_chain(net: FinetuneNet, image_size: int) -> list[str]:
    """Names of the body's modules (Sequentials expanded) whose composition is ``net.maps``, bottom first.

    Checked on a random batch; the longest matching prefix wins because freshly initialized residual blocks can be
    identities. Models whose forward is not a plain chain (e.g. ViT's token handling) raise TransferlabError.
    """
    candidates = _flatten(net.body)
    was_training = net.training
    net.eval()
    matched = 0
    try:
        x = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
        x = x.to(next(net.parameters()).device)
        expected = net.maps(x)
        for length, name in enumerate(candidates, start=1):
            try:
                x = net.body.get_submodule(name)(x)
            except (RuntimeError, TypeError, ValueError):
                break
            if x.shape == expected.shape and torch.allclose(x, expected, rtol=1e-4, atol=1e-5):
                matched = length
    finally:
        net.train(was_training)
    if not matched:
        raise TransferlabError(
            f"{type(net.body).__name__} is not a plain chain of blocks, so boundary activations cannot be cached; "
            "train without --cache-views"
        )
    return candidates[:matched]


def split_chain(chain: list[str], boundary: str | None) -> tuple[list[str], list[str]]:
    """(lower, upper) module names; ``boundary`` is the first module of the upper part (None: all is lower).

    ``boundary`` may name a chain element (``blocks.3.0``) or a container of elements (``blocks.3``, a stage).
    """
    if boundary is None:
        return chain, []
    starts = [i for i, name in enumerate(chain) if name == boundary or name.startswith(boundary + ".")]
    if not starts:
        raise TransferlabError(f"unknown boundary '{boundary}'; the feature chain is: {', '.join(chain)}")
    if starts[0] == 0:
        raise TransferlabError(
            f"nothing is frozen below '{boundary}', so nothing to cache: --cache-views needs frozen lower units"
        )
    return chain[: starts[0]], chain[starts[0] :]


def lowest_trainable(units: list[Unit], plans: list[StagePlan]) -> Unit | None:
    """The bottom-most unit any stage trains; everything below it stays frozen for the whole run."""
    trained = {unit.name for plan in plans for unit in plan.trainable}
    return next((unit for unit in units if unit.name in trained), None)


class ActivationStore:
    """``views`` fp16 activations of one shape per sample, in RAM or (beyond ``memory_budget`` bytes) on disk."""

    def __init__(
        self,
        n: int,
        views: int,
        shape: tuple[int, ...],
        *,
        directory: Path | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> None:
        full_shape = (views, n, *shape)
        self.nbytes = 2 * math.prod(full_shape)
        self.path: Path | None = None
        self.views, self.n = views, n
        if self.nbytes <= memory_budget:
            self.data: np.ndarray = np.empty(full_shape, dtype=np.float16)
            return
        if directory is None:
            raise TransferlabError(
                f"boundary activations need {self.nbytes / 2**30:.1f} GiB, above the memory budget, "
                "and there is no directory to spill them to"
            )
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"boundary-{os.getpid()}-{views}x{n}x{'x'.join(map(str, shape))}.npy"
        self.data = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float16, shape=full_shape)

    def put(self, view: int, start: int, activations: torch.Tensor) -> None:
        self.data[view, start : start + len(activations)] = activations.detach().to("cpu", torch.float16).numpy()

    def release(self) -> None:
        """Drop the data and delete the spill file, if any."""
        self.data = np.empty((0,), dtype=np.float16)
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class CachedActivations(Dataset):
    """(boundary activation as float32, target) per sample; each access draws one of the sample's views.

    The view is drawn from torch's global RNG, the one the engine checkpoints, so ``--resume`` replays it exactly.
    """

    def __init__(self, store: ActivationStore, targets: torch.Tensor) -> None:
        self.store, self.targets = store, targets

    def __len__(self) -> int:
        return self.store.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        view = int(torch.randint(self.store.views, ())) if self.store.views > 1 else 0
        return torch.from_numpy(self.store.data[view, index].astype(np.float32)), self.targets[index]


@torch.no_grad()
def cache_activations(
    lower: Callable[[torch.Tensor], torch.Tensor],
    loader: DataLoader,
    views: int,
    *,
    seed: int,
    directory: Path | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> ActivationStore:
    """Outputs of ``lower`` for ``views`` passes over ``loader`` (fixed order; its transform draws the augmentation).

    Each view is seeded (``seed``, view) inside a forked RNG, so caching is reproducible and leaves the global RNG
    as it found it.
    """
    n = len(loader.dataset)
    store: ActivationStore | None = None
    with torch.random.fork_rng():
        for view in range(views):
            torch.manual_seed(seed * 1009 + view)
            start = 0
            for images, _ in loader:
                out = lower(images)
                if store is None:
                    shape = tuple(out.shape[1:])
                    store = ActivationStore(n, views, shape, directory=directory, memory_budget=memory_budget)
                store.put(view, start, out)
                start += len(out)
    if store is None:
        raise TransferlabError("no images to cache boundary activations for")
    return store


class BoundaryNet(FinetuneNet):
    """``net``'s own body and head (shared, so training here trains ``net``), fed boundary activations.

    Its state dict has the same keys as ``net``'s, so the engine's checkpoints and early stopping work unchanged.
    """

    def __init__(self, net: FinetuneNet, upper: list[str]) -> None:
        super().__init__(net.body, net.head, net.stage_index)
        self.upper = upper

    def maps(self, activations: torch.Tensor) -> torch.Tensor:
        return run_chain(self.body, self.upper, activations)


def cached_boundary(
    net: FinetuneNet,
    units: list[Unit],
    plans: list[StagePlan],
    loaders: dict[str, DataLoader],
    options: FinetuneOptions,
    *,
    image_size: int,
    directory: Path | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> tuple[BoundaryNet, dict[str, DataLoader], list[ActivationStore]]:
    """Cache activations below every stage's trainable units; return the upper-part net and loaders over them.

    Training uses ``options.cache_views`` augmented views per image (the train loader's transform); val/test one
    plain view. The frozen lower part runs in inference mode, which for frozen units is exactly what training would do.
    """
    if options.cache_views < 1:
        raise TransferlabError(f"--cache-views must be at least 1, got {options.cache_views}")
    lowest = lowest_trainable(units, plans)
    lower, upper = split_chain(feature_chain(net, image_size), None if lowest is None else lowest.modules[0])
    was_training, device = net.training, next(net.parameters()).device
    net.eval()
    try:
        stores = {
            split: cache_activations(
                lambda images: run_chain(net.body, lower, images.to(device, non_blocking=True)),
                DataLoader(loader.dataset, batch_size=loader.batch_size or 32, num_workers=loader.num_workers),
                options.cache_views if split == "train" else 1,
                seed=options.seed,
                directory=directory,
                memory_budget=memory_budget,
            )
            for split, loader in loaders.items()
            if len(loader.dataset)
        }
    finally:
        net.train(was_training)
    batch_size = loaders["train"].batch_size or 32
    cached = {split: CachedActivations(store, loaders[split].dataset.targets) for split, store in stores.items()}
    new_loaders = {
        split: training_loader(dataset, batch_size, options.balance, 0)
        if split == "train"
        else evaluation_loader(dataset, batch_size, 0)
        for split, dataset in cached.items()
    }
    return BoundaryNet(net, upper), loaders | new_loaders, list(stores.values())
