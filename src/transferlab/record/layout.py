"""Every file name of a run directory, in one place: the contract between the stages that write a run and the
report, advice, ``runs``/``compare``/``rerun``, ``export`` and ``predict`` that read it.

Writers and readers use these names (never string literals), so renaming or adding a file is one edit here.
"""

CONFIG = "config.json"  # RunConfig.to_dict(): enough to repeat the run
ENVIRONMENT = "environment.json"  # Python, platform, package versions
PROCESS = "process.json"  # command line, working directory, peak memory
RECORD = "record.json"  # task, classes, split counts and digest, backbone identity, probe
METRICS = "metrics.json"  # the probe's metrics per split
TIMINGS = "timings.json"
SPLIT = "split.csv"  # path, sha256, split per image
PROBLEMS = "problems.txt"  # skipped inputs, one per line, with the reason
PREDICTIONS = "predictions.csv"  # the final model's validation and test predictions
PROBE_WEIGHTS = "probe.safetensors"
PROBE_META = "probe.json"
ENSEMBLE = "ensemble.json"  # probes of several backbones averaged: members, thresholds, the CV evidence
ENSEMBLE_MEMBERS = "ensemble"  # ensemble/<backbone>/probe.* for each member
PLAN = "plan.json"  # --time-limit: the stages chosen, their estimates and actual times
RANKING = "ranking.json"
SEARCH = "search.json"
STUDY = "study.db"  # the default (SQLite) Optuna storage of the head search
FRACTIONS = "fractions.json"
FINETUNE = "finetune.json"
FINETUNE_SEARCH = "finetune_search.json"
FINETUNE_CHECKPOINT = "finetune_checkpoint.safetensors"
FINETUNED_WEIGHTS = "finetuned.safetensors"
FINETUNED_META = "finetuned.json"
DEPLOYED = "deployed.json"  # which stage's model predict/export/evaluate use, and the validation evidence why
FOLDS = "folds.json"
LR_FIND = "lr_find.json"
LR_FIND_PLOT = "lr_find.png"
AUGMENTATION_PREVIEW = "augmentation_preview.png"
ADVICE = "advice.json"
REPORT = "report.html"
# ``transferlab evaluate RUN DATA`` writes one folder per data set it scored: evaluations/<data name>/
EVALUATIONS = "evaluations"
EVALUATION_PAGE = "evaluation.html"  # metrics, confusion matrix, per-class scores, worst errors
EVALUATION_METRICS = "evaluation.json"  # classification_metrics of the data set, plus what was skipped
EVALUATION_PREDICTIONS = "predictions.csv"  # one row per scored image, in the format of the run's predictions.csv
