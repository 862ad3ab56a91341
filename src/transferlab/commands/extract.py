"""``transferlab extract``: fill the feature cache for DATA and stop; under ``torchrun`` the ranks share the work.

The cache is content-addressed, so a later ``run``, ``probe``, ``rank`` or ``finetune`` with the same backbone
options finds every image there and extracts nothing. The work is split by ``features.extract.rank_share``.
"""

from __future__ import annotations

import argparse
import logging

from transferlab.commands.options import add_run_options, run_config


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "extract",
        help="fill the feature cache for DATA (shared by processes, GPUs and machines under torchrun)",
        description="Compute the pooled features of every image of DATA at every cut point into the feature cache, "
        "in the precision each image is scored at (validation and test in fp32), then stop. Under torchrun each "
        "rank computes a disjoint set of cache shards of the uncached images into one shared --cache-dir: "
        "'torchrun --nproc_per_node 4 -m transferlab extract DATA --device cuda --cache-dir C'. A killed rank "
        "loses only its unfinished shard; the same command again computes only what is missing. Use the same "
        "data and backbone options as the run that follows.",
    )
    add_run_options(parser, run_directory=False)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> None:
    from transferlab.devices import resolve_device
    from transferlab.distributed import from_environment
    from transferlab.prepare import images_computed, prepare

    distributed = from_environment(resolve_device(args.device).type)
    if not distributed.is_main:  # one voice under torchrun (rank 0's); warnings, e.g. a bad image, from any rank
        logging.getLogger("transferlab").setLevel(logging.WARNING)
    try:
        prepared = prepare(
            run_config(args),
            cache_dir=args.cache_dir,
            progress=not args.no_progress and distributed.is_main,
            distributed=distributed,
        )
        per_rank = distributed.gather(images_computed(prepared.extraction_record())[0])
    finally:
        distributed.close()
    if not distributed.is_main:
        return
    computed = sum(per_rank)
    ranks = f" ({', '.join(f'rank {r}: {n}' for r, n in enumerate(per_rank))})" if distributed.enabled else ""
    cached = max(0, len(set(prepared.hashes)) - computed)  # (each rank's own count of cached images is partial)
    print(f"features: {computed} computed{ranks}, {cached} from cache, {len(prepared.problems)} skipped")
    print(f"cache: {prepared.cache.directory.parent}")
