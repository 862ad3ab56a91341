"""Head specs: serialization, the seeds' heads, analytic cost matching the built module, pooled-vector input."""

from __future__ import annotations

import pytest
import torch

from transferlab.errors import TransferlabError
from transferlab.heads import HeadSpec, build_head, cost_warning, head_cost
from transferlab.heads.build import Dropout

SEED_CONV = HeadSpec(pooling="conv1x1", conv_channels=448, extra_maxpool=True, conv_pooling="avg", widths=(112,))
SEED_FLATTEN = HeadSpec(pooling="flatten", widths=(2500, 500, 100))

SPECS = [
    HeadSpec(),
    HeadSpec(pooling="max", widths=(32,), dropout=0.3, batchnorm=True, activation="gelu"),
    HeadSpec(pooling="avgmax", extra_maxpool=True, widths=(16, 8), output="sigmoid"),
    HeadSpec(pooling="flatten", widths=(20,), activation="tanh"),
    HeadSpec(pooling="conv1x1", conv_channels=12, conv_pooling="flatten", batchnorm=True),
    SEED_CONV,
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe())
def test_spec_round_trips_and_cost_matches_module(spec: HeadSpec) -> None:
    assert HeadSpec.from_json(spec.to_json()) == spec
    assert HeadSpec.from_dict(spec.to_dict()) == spec
    head = build_head(spec, in_channels=40, spatial=(7, 5), n_outputs=3)
    params, megabytes = head_cost(spec, 40, (7, 5), 3)
    assert params == sum(p.numel() for p in head.parameters())
    assert megabytes == pytest.approx(params * 4 / 1e6)
    head.eval()
    assert head(torch.randn(4, 40, 7, 5)).shape == (4, 3)


def test_seed_flatten_head_is_priced_without_allocating() -> None:
    params, megabytes = head_cost(SEED_FLATTEN, 1792, 8, 10)
    expected = 8 * 8 * 1792 * 2500 + 2500 + 2500 * 500 + 500 + 500 * 100 + 100 + 100 * 10 + 10
    assert params == expected
    assert 287e6 < params < 289e6  # the issue says "~287M": 286.7M in the first layer alone
    assert megabytes > 1000
    warning = cost_warning(params, n_train=5000)
    assert warning is not None and "288.0M" in warning
    assert cost_warning(head_cost(HeadSpec(), 1792, 8, 10)[0], n_train=5000) is None


def test_seed_conv_head_structure() -> None:
    assert SEED_CONV.describe().startswith("conv1x1(448) → maxpool → avg → 112 → out(softmax)")
    params, _ = head_cost(SEED_CONV, 1280, 7, 5)
    assert params == 1280 * 448 + 448 + 448 * 112 + 112 + 112 * 5 + 5
    assert SEED_CONV.needs_maps


def test_pooled_vectors_give_same_logits_as_maps_for_average_pooling() -> None:
    spec = HeadSpec(widths=(8,), batchnorm=True)
    assert not spec.needs_maps
    head = build_head(spec, 6, 4, 2).eval()
    maps = torch.randn(3, 6, 4, 4)
    torch.testing.assert_close(head(maps), head(maps.mean(dim=(2, 3))))
    with pytest.raises(ValueError, match="needs"):
        build_head(HeadSpec(pooling="max"), 6, 4, 2)(maps.mean(dim=(2, 3)))


@pytest.mark.parametrize(
    "bad",
    [
        {"pooling": "median"},
        {"pooling": "conv1x1"},
        {"conv_channels": 8},
        {"dropout": 1.0},
        {"widths": [0]},
        {"output": "softmin"},
        {"nonsense": 1},
    ],
)
def test_invalid_specs_are_user_errors(bad: dict) -> None:
    with pytest.raises(TransferlabError, match="head spec"):
        HeadSpec.from_dict(bad)


def test_dropout_drops_p_of_units_keeps_the_mean_and_is_identity_in_eval() -> None:
    torch.manual_seed(0)
    dropout = Dropout(0.3)
    x = torch.ones(400, 500, requires_grad=True)
    y = dropout(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.3) < 0.01
    assert abs(y.mean().item() - 1.0) < 0.02  # inverted scaling keeps the expectation
    y.sum().backward()
    assert torch.equal(x.grad == 0, y == 0)  # no gradient through dropped units
    dropout.eval()
    assert torch.equal(dropout(x), x)
