"""Does a bigger budget buy a better model? ``transferlab run TRAIN --test TEST --time-limit B`` for several
budgets on suite datasets, beside today's default ``transferlab run`` (no budget): wall time vs limit, what the
plan ran, and the deployed model's test score.

Every run gets a fresh feature cache, so no budget inherits another's extraction. Needs the quality suite
(``python scripts/make_quality_suite.py``).

    python bench/budget.py [--budgets 1m,2m,4m,8m] [--only fashion_mnist,sklearn_digits] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality

from transferlab import RunConfig, run
from transferlab.budget import parse_duration
from transferlab.errors import TransferlabError
from transferlab.record import layout

MARGIN = 0.10  # the promise: within the limit + 10% (or 30 s, whichever is larger)
MARGIN_SECONDS = 30.0


def planned_run(train: Path, test_path: Path, test: quality.Split, limit: float | None, seed: int) -> dict:
    options = {"data": str(train), "test": str(test_path), "seed": seed, "time_limit": limit}
    with (
        tempfile.TemporaryDirectory(prefix="budget-runs-") as runs,
        tempfile.TemporaryDirectory(prefix="budget-cache-") as cache,
    ):
        started = time.perf_counter()
        result = run(RunConfig(**options), runs_dir=runs, cache_dir=cache, progress=False)
        seconds = time.perf_counter() - started
        metric = quality.reported_test_metric(result)
        if metric is None:
            metric = quality.score(test, quality.predictor_scores(result.run_dir, test))
        plan_file = result.run_dir / layout.PLAN
        plan = json.loads(plan_file.read_text()) if plan_file.is_file() else {"steps": []}
    short = lambda stage: stage.replace("probe tf_efficientnet_", "").replace(" of probes", "")  # noqa: E731
    ran = [short(s["stage"]) for s in plan["steps"] if s["status"] == "done"]
    skipped = [f"{short(s['stage'])} ({s['note']})" for s in plan["steps"] if s["status"] in ("skipped", "stopped")]
    return {
        "skipped": "; ".join(skipped),
        "metric": metric,
        "seconds": seconds,
        "within": limit is None or seconds <= max(limit * (1 + MARGIN), limit + MARGIN_SECONDS),
        "ran": ", ".join(ran) or "probe",
        "backbone": result.config.backbone.replace("tf_efficientnet_", ""),
        "deployed": result.deployed.get("stage", "probe"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", type=Path, default=quality.ROOT / "bench" / "data" / "quality")
    parser.add_argument("--only", default="fashion_mnist,sklearn_digits")
    parser.add_argument("--budgets", default="1m,2m,4m,8m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", type=Path, help="append the table to this markdown file")
    args = parser.parse_args()
    budgets = [None] + [parse_duration(b) for b in args.budgets.split(",")]
    torch.set_num_threads(2)
    import logging

    logging.getLogger("transferlab").setLevel(logging.WARNING)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    suite = quality.suite_module()
    infos = suite.build_suite(args.suite, suite.parse_only(args.only), args.seed)
    header = ["dataset", "budget", "wall s", "within limit", "stages run", "backbone", "deployed", "test metric"]
    rows, by_budget = [], {b: [] for b in budgets}
    for info in infos:
        train_path, test_path = suite.train_test(args.suite / info.name, info.task)
        test = quality.read_split(test_path, quality.read_split(train_path).classes)
        for limit in budgets:
            label = "default (no limit)" if limit is None else f"{limit / 60:g} min"
            try:
                out = planned_run(train_path, test_path, test, limit, args.seed)
            except TransferlabError as error:  # a budget too small for the first probe: say so, keep going
                print(f"  {info.name} {label}: {error}", flush=True)
                rows.append([info.name, label, "–", "refused", str(error)[:60], "", "", "–"])
                continue
            ran = out["ran"] + (f"; skipped {out['skipped']}" if out["skipped"] else "")
            print(f"  {info.name} {label}: {out['metric']:.4f} in {out['seconds']:.0f} s ({ran})", flush=True)
            by_budget[limit].append(out)
            rows.append(
                [
                    info.name,
                    label,
                    f"{out['seconds']:.0f}",
                    "yes" if out["within"] else "NO",
                    out["ran"],
                    out["backbone"],
                    out["deployed"],
                    f"{out['metric']:.4f}",
                ]
            )
    for limit, outs in by_budget.items():
        if not outs:
            continue
        label = "default (no limit)" if limit is None else f"{limit / 60:g} min"
        rows.append(
            [
                "MEAN",
                label,
                f"{np.mean([o['seconds'] for o in outs]):.0f}",
                f"{sum(o['within'] for o in outs)}/{len(outs)}",
                "",
                "",
                "",
                f"{np.mean([o['metric'] for o in outs]):.4f}",
            ]
        )
    print()
    print(quality.render(header, rows, markdown=False))
    if args.markdown:
        command = "python bench/budget.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        with open(args.markdown, "a", encoding="utf-8") as handle:
            handle.write(f"\n`{command}` ({stamp}):\n\n{quality.render(header, rows, markdown=True)}\n")


if __name__ == "__main__":
    main()
