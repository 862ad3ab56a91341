"""``transferlab.ImageClassifier``: fit / predict / predict_proba / score / load, and clear misuse errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_class_folder
from sklearn.base import clone

from transferlab import ImageClassifier, RunConfig, TransferlabError


def _classifier(options: dict, **extra) -> ImageClassifier:
    options = {key: value for key, value in options.items() if key != "backbone"}
    return ImageClassifier(backbone="test_efficientnet", seed=0, **options, **extra)


def test_use_before_fit_is_a_clear_error(tiny_run_options: dict, class_folder: Path) -> None:
    clf = _classifier(tiny_run_options)
    assert "not fitted" in repr(clf)
    for call in (lambda: clf.predict([class_folder / "red" / "red_000.png"]), lambda: clf.score(class_folder)):
        with pytest.raises(TransferlabError, match=r"not fitted yet: call fit\(data\)"):
            call()
    with pytest.raises(TransferlabError, match="not a run directory"):
        ImageClassifier.load(class_folder)


def test_fit_predict_score_and_load_round_trip(tiny_run_options: dict, class_folder: Path, tmp_path: Path) -> None:
    clf = _classifier(tiny_run_options, name="api").fit(class_folder)
    assert clf.run_dir_ == Path(tiny_run_options["runs_dir"]) / "api" and (clf.run_dir_ / "report.html").is_file()
    assert clf.classes_ == ["blue", "green", "red"] and clf.multilabel_ is False

    files = [class_folder / "red" / "red_001.png", class_folder / "blue" / "blue_002.png"]
    assert clf.predict(files) == ["red", "blue"]
    probabilities = clf.predict_proba(class_folder / "green")
    assert probabilities.shape == (12, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert (probabilities.argmax(axis=1) == 1).mean() > 0.9

    holdout = make_class_folder(tmp_path / "holdout", per_class=4, classes=("red", "green"), seed=5)
    assert clf.score(holdout) == pytest.approx(1.0)
    reloaded = ImageClassifier.load(clf.run_dir_)
    assert (reloaded.backbone, reloaded.cut_point, reloaded.seed) == ("test_efficientnet", "head", 0)
    fitted_config = {k: v for k, v in clf.get_params().items() if k not in ("runs_dir", "name", "cache_dir")}
    assert {k: reloaded.get_params()[k] for k in fitted_config} == {**fitted_config, "progress": False}
    np.testing.assert_allclose(reloaded.predict_proba(files), clf.predict_proba(files), atol=1e-6)

    (holdout / "red" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(TransferlabError, match=r"broken\.png: not an image"):
        clf.predict(sorted(holdout.rglob("*.png")))
    with pytest.warns(UserWarning, match="broken.png"):
        assert clf.score(holdout) == pytest.approx(1.0)
    unknown = make_class_folder(tmp_path / "unknown", per_class=2, classes=("red", "purple"))
    with pytest.raises(TransferlabError, match="classes the model does not know: purple"):
        clf.score(unknown)


def test_parameters_are_explicit_so_sklearn_can_clone_and_set_them(tiny_run_options: dict) -> None:
    clf = _classifier(tiny_run_options, trials=4, fractions=[0.5, 1.0], subset=0.5)
    params = clf.get_params()
    assert params["trials"] == 4 and params["subset"] == 0.5 and params["backbone"] == "test_efficientnet"
    twin = clone(clf)
    assert twin is not clf and twin.get_params() == params
    twin.set_params(trials=9, seed=3)
    assert twin.run_config("photos") == RunConfig(**{**clf.run_config("photos").to_dict(), "trials": 9, "seed": 3})
    with pytest.raises(TransferlabError, match="--trials must be >= 0"):
        twin.set_params(trials=-2).run_config("photos")
    with pytest.raises(ValueError, match="Invalid parameter"):
        twin.set_params(colour="red")
