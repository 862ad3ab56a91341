"""Predict with a run or an exported ONNX model on files, folders or a CSV of paths."""

from transferlab.predict.inputs import collect_inputs
from transferlab.predict.predictor import Predictions, Predictor, load_predictor, predict_paths, write_predictions_csv

__all__ = ["Predictions", "Predictor", "collect_inputs", "load_predictor", "predict_paths", "write_predictions_csv"]
