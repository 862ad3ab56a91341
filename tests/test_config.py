"""``RunConfig``: validated once when made (one clear line per bad value), saved and reloaded losslessly."""

from __future__ import annotations

import json

import pytest

from transferlab import RunConfig, TransferlabError


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"trials": -1}, "--trials must be >= 0, got -1"),
        ({"subset": 1.5}, r"--subset must be in \(0, 1\], got 1.5"),
        ({"val_fraction": -0.1}, r"--val-fraction must be in \[0, 1\)"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "must be below 1, got 1.1"),
        ({"search_jobs": 0}, "--jobs must be >= 1, got 0"),
        ({"search_ensemble": 0}, "--ensemble must be >= 1, got 0"),
        ({"fractions": [0.5, 2.0]}, r"--fractions must be in \(0, 1\], got 2.0"),
        ({"batch_size": 0}, "--batch-size must be >= 1"),
        ({"image_size": 4}, "--image-size must be >= 8"),
    ],
)
def test_bad_values_are_one_line_errors(values: dict, message: str) -> None:
    with pytest.raises(TransferlabError, match=message) as raised:
        RunConfig(data="photos", **values)
    assert "\n" not in str(raised.value)


def test_saved_config_reloads_equal_and_unknown_keys_are_refused() -> None:
    config = RunConfig(data="photos", trials=7, fractions=[0.25, 1.0], finetune={"epochs": 2}, image_size=96)
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(TransferlabError, match="unknown options: colour"):
        RunConfig.from_dict({**config.to_dict(), "colour": "red"})
