"""Which input sizes a network takes: checked once when a backbone is loaded at a size of the user's choosing.

Convolutional networks take nearly any size; patch-token models (built with ``dynamic_img_size``) take multiples of
their patch size; very small inputs can be too small for a network's strides or kernels. Rather than encode each
family's rule, one blank image at the requested size goes through every stage when the backbone loads, and a
failure becomes a one-line error naming the sizes the network does take, instead of a traceback deep inside
extraction or fine-tuning.
"""

from __future__ import annotations

import torch
from torch import nn

from transferlab.errors import TransferlabError


def patch_size(network: nn.Module) -> int | None:
    """The side of a patch-token model's patches (16 for ``vit_tiny_patch16_224``); None for other networks."""
    embed = getattr(network, "patch_embed", None)
    size = getattr(embed, "patch_size", None)
    if size is None:
        return None
    return int(size[0] if isinstance(size, tuple | list) else size)


def accepted_sizes(network: nn.Module) -> str:
    """The sizes ``network`` takes, in words (for error messages)."""
    default = network.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    patch = patch_size(network)
    if patch:
        return f"it takes multiples of its {patch}-px patch, e.g. {4 * patch}, {6 * patch} or its own {default}"
    return f"try a larger --image-size (its own is {default})"


def check_input_size(network: nn.Module, name: str, size: int) -> None:
    """Run one blank ``size``×``size`` image through every stage; a size the network refuses is a user error."""
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            network.forward_intermediates(torch.zeros(1, 3, size, size, device=next(network.parameters()).device))
    except (AssertionError, RuntimeError, ValueError) as error:
        detail = " ".join(str(error).split())[:160]
        raise TransferlabError(f"{name} cannot take {size}-px images ({detail}); {accepted_sizes(network)}") from None
    finally:
        network.train(was_training)
