"""The one reader of weight files: safetensors, or ``torch.load(weights_only=True)``, so reading never runs code."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from transferlab.errors import TransferlabError


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``path``: a safetensors file, or a plain (possibly wrapped) torch state dict."""
    if not path.is_file():
        raise TransferlabError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own error type for a bad header or truncated data
            raise TransferlabError(f"{path}: not a valid safetensors file ({str(error)[:200]})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise TransferlabError(
            f"{path}: refused to load: not a plain tensor checkpoint ({type(error).__name__}: {str(error)[:200]})"
        ) from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise TransferlabError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    return {key.removeprefix("module."): value for key, value in state.items()}
