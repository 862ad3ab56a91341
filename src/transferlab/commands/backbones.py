"""``transferlab backbones``: which backbones have weights on this machine, and where a model can be cut."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "backbones",
        help="list backbones with local weights, or one model's cut points and their costs",
        description="Packaged backbones and timm models found in the local Hugging Face cache. Any other timm model "
        "works with --weights FILE, or with --allow-download where there is a network. With --cut-points NAME: "
        "every cut point of that timm model with its feature shape and the parameters, MB and GFLOPs of the network "
        "up to it (no weights needed).",
    )
    parser.add_argument("--cut-points", metavar="NAME", help="list the cut points of this timm model")
    parser.add_argument("--image-size", type=int, help="input resolution for --cut-points (default: the model's own)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> None:
    if args.cut_points:
        print(cut_point_table(args.cut_points, args.image_size))
        return
    from transferlab.backbones import available_backbones

    for entry in available_backbones():
        print(f"{entry.name:<32} {'local weights: ' + entry.weights if entry.weights else 'no local weights'}")


def cut_point_table(name: str, image_size: int | None) -> str:
    """The cut points of ``name`` at ``image_size`` (None: the model's pretrained size), one line each."""
    import timm

    from transferlab.backbones.costs import cut_costs
    from transferlab.backbones.registry import check_model_name
    from transferlab.errors import require

    check_model_name(name)
    require(image_size is None or image_size >= 8, f"--image-size must be >= 8, got {image_size}")
    size = image_size or timm.models.get_pretrained_cfg(name.split(".")[0]).input_size[-1]
    costs = cut_costs(name, (3, size, size))
    lines = [f"{name} at {size}x{size} px: the network up to each cut point", ""]
    lines.append(f"{'cut point':<16} {'feature shape':<16} {'params':>9} {'MB':>8} {'GFLOPs':>8}")
    for cost in costs:
        shape = "x".join(str(n) for n in cost.shape)
        lines.append(
            f"{cost.cut_point:<16} {shape:<16} {cost.params / 1e6:>8.2f}M {cost.megabytes:>8.1f} {cost.gflops:>8.3f}"
        )
    lines.append("")
    lines.append(
        "features: a stage's maps averaged (patch tokens for ViT-style models), or at head the model's own "
        "pre-logits (CLS token for ViT/DeiT); choose with --cut-point NAME"
    )
    return "\n".join(lines)
