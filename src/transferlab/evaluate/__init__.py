"""Evaluate stage: a finished model scored on any labelled data set, shown in the terminal and written down as a
page, a JSON record and a predictions CSV in ``<run>/evaluations/<data name>/``.

It sits above :mod:`transferlab.predict` (the scores), :mod:`transferlab.metrics` (the numbers) and
:mod:`transferlab.report` (the pictures and the page's template); none of them imports it.
"""

from transferlab.evaluate.page import evaluation_folder, write_evaluation
from transferlab.evaluate.scoring import Evaluation, align_labels, data_name, evaluate, evaluate_dataset
from transferlab.evaluate.text import format_evaluation

__all__ = [
    "Evaluation",
    "align_labels",
    "data_name",
    "evaluate",
    "evaluate_dataset",
    "evaluation_folder",
    "format_evaluation",
    "write_evaluation",
]
