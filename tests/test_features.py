"""Feature extraction: accurate bf16 fast path, content-keyed cache, atomic shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_BACKBONE, TINY_SIZE, make_class_folder
from PIL import Image
from skimage import data as skdata

from transferlab.backbones import DEFAULT_BACKBONE, load_backbone
from transferlab.config import RunConfig
from transferlab.features import ExtractionReport, FeatureCache, extract_features
from transferlab.features.cache import content_hash
from transferlab.features.extract import MIN_COSINE, Precision, choose_precision, decide_precision, feature_cache
from transferlab.prepare import prepare

FP32 = Precision("fp32")


def test_bf16_features_stay_within_cosine_bound_of_fp32_on_real_photos() -> None:
    backbone = load_backbone(DEFAULT_BACKBONE)
    transform = backbone.transform()
    photos = (skdata.chelsea(), skdata.coffee(), skdata.astronaut())
    images = torch.stack([transform(Image.fromarray(photo)) for photo in photos])
    precision = choose_precision(backbone, images.contiguous(memory_format=torch.channels_last))
    assert (precision.name, precision.device) == ("bf16", "cpu")
    assert precision.min_cosine > MIN_COSINE


def test_fp32_can_be_forced(monkeypatch: pytest.MonkeyPatch, tiny_weights: Path) -> None:
    monkeypatch.setenv("TRANSFERLAB_FP32", "1")
    backbone = load_backbone("test_efficientnet", tiny_weights, image_size=32)
    assert choose_precision(backbone, torch.zeros(2, 3, 32, 32)) == Precision("fp32", None, "cpu")


def _files(folder: Path, n: int = 6) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _extract_fp32(backbone, paths: list[Path], digests: list[str], root: Path, **options) -> ExtractionReport:
    cache = feature_cache(backbone, root, FP32)
    return extract_features(backbone, paths, digests, cache, precision=FP32, workers=0, progress=False, **options)


def test_cache_reuse_skips_the_forward_pass(tmp_path: Path, tiny_weights: Path, monkeypatch) -> None:
    backbone = load_backbone("test_efficientnet", tiny_weights, image_size=32)
    paths = _files(tmp_path / "img")
    digests = [content_hash(p) for p in paths]
    first = _extract_fp32(backbone, paths, digests, tmp_path / "c")
    assert first.computed == len(paths)

    def forbidden(*args, **kwargs):
        raise AssertionError("backbone ran although every image is cached")

    monkeypatch.setattr(type(backbone), "features", forbidden)
    cache = feature_cache(backbone, tmp_path / "c", FP32)  # a new process would open the cache like this
    second = extract_features(backbone, paths, digests, cache, precision=FP32, workers=0, progress=False)
    assert (second.computed, second.cached) == (0, len(paths))
    assert set(cache.load(digests, ["head"])) == {"head"}


def test_cache_key_changes_with_weights_preprocessing_and_precision(tmp_path: Path, tiny_weights: Path) -> None:
    a = load_backbone("test_efficientnet", tiny_weights, image_size=32)
    b = load_backbone("test_efficientnet", tiny_weights, image_size=48)
    assert feature_cache(a, tmp_path, FP32).key != feature_cache(b, tmp_path, FP32).key
    # bf16 and fp32 features of the same image differ by ~5% (demo photos): they must never share a cache
    assert feature_cache(a, tmp_path, FP32).key != feature_cache(a, tmp_path, Precision("bf16", 0.995)).key


def test_precision_depends_on_the_images_not_on_their_order_or_the_cache(
    tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backbone = load_backbone("test_efficientnet", tiny_weights, image_size=32)
    paths = _files(tmp_path / "img", 12)
    digests = [content_hash(p) for p in paths]
    calibrated: list[int] = []
    real_choose = choose_precision

    def counting(model, images, device):
        calibrated.append(len(images))
        return real_choose(model, images, device)

    monkeypatch.setattr("transferlab.features.extract.choose_precision", counting)
    first = decide_precision(backbone, paths, digests, tmp_path / "c")
    assert calibrated == [8]  # the first 8 images by content hash
    # another order of the same files, after part of them was cached: the remembered decision, no backbone run
    again = decide_precision(backbone, paths[::-1], digests[::-1], tmp_path / "c")
    assert again == first and calibrated == [8]
    # other images (e.g. a subset that changes the calibration set) are calibrated on their own
    decide_precision(backbone, paths[:4], digests[:4], tmp_path / "c")
    assert calibrated == [8, 4]
    monkeypatch.setenv("TRANSFERLAB_FP32", "1")
    assert decide_precision(backbone, paths, digests, tmp_path / "c") == FP32


def test_features_identical_for_same_content_under_another_name(tmp_path: Path, tiny_weights: Path) -> None:
    backbone = load_backbone("test_efficientnet", tiny_weights, image_size=32)
    paths = _files(tmp_path / "img", 2)
    copy = tmp_path / "img" / "copy.png"
    copy.write_bytes(paths[0].read_bytes())
    digests = [content_hash(p) for p in [*paths, copy]]
    assert digests[0] == digests[2]
    report = _extract_fp32(backbone, [*paths, copy], digests, tmp_path / "c")
    assert report.computed == 2  # the copy is computed once


def test_partial_or_corrupt_shards_are_never_read(tmp_path: Path) -> None:
    identity = {"backbone": "x"}
    cache = FeatureCache(tmp_path, identity)
    cache.write_shard(["a" * 64], {"head": np.ones((1, 4), dtype=np.float32)})
    (cache.directory / "shard-broken.npz").write_bytes(b"PK\x03\x04 truncated")
    (cache.directory / ".shard-x.npz.123.tmp").write_bytes(b"partial")
    reopened = FeatureCache(tmp_path, identity)
    assert "a" * 64 in reopened
    assert [p.name for p in reopened.unreadable] == ["shard-broken.npz"]
    np.testing.assert_array_equal(reopened.load(["a" * 64], ["head"])["head"], np.ones((1, 4)))


def test_undecodable_images_are_reported_not_fatal(tmp_path: Path, tiny_weights: Path) -> None:
    backbone = load_backbone("test_efficientnet", tiny_weights, image_size=32)
    paths = _files(tmp_path / "img", 3)
    bad = tmp_path / "img" / "bad.jpg"
    bad.write_text("not an image")
    paths.append(bad)
    digests = [content_hash(p) for p in paths]
    report = _extract_fp32(backbone, paths, digests, tmp_path / "c", batch_size=2)
    assert report.computed == 3
    assert list(report.failed) == [str(bad)]


def test_bf16_training_features_with_fp32_validation_and_test(
    tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reported metrics must be the deployed (fp32) model's: held-out rows are fp32 even when training rows are bf16."""
    config = RunConfig(
        str(make_class_folder(tmp_path / "data")), TINY_BACKBONE, str(tiny_weights), image_size=TINY_SIZE
    )
    options = {"cache_dir": tmp_path / "cache", "progress": False}
    monkeypatch.setenv("TRANSFERLAB_FP32", "1")
    fp32 = prepare(config, **options)
    monkeypatch.delenv("TRANSFERLAB_FP32")
    monkeypatch.setattr("transferlab.prepare.decide_precision", lambda *_: Precision("bf16", 0.999))
    mixed = prepare(config, **options)
    assert mixed.extraction.precision == "bf16" and fp32.held_out is None
    assert mixed.held_out is not None and mixed.held_out.report.computed == 0  # the fp32 cache already had them
    assert len(mixed.held_out.rows) == len(mixed.split.indices("val")) + len(mixed.split.indices("test"))
    ours, reference = mixed.features(), fp32.features()
    for split_name in ("val", "test"):
        np.testing.assert_array_equal(ours[split_name], reference[split_name])
    assert not np.array_equal(ours["train"], reference["train"])  # bf16 rounding
    np.testing.assert_allclose(ours["train"], reference["train"], rtol=0.1, atol=0.1)


def test_each_image_gets_one_forward_pass_per_precision_it_is_used_at(
    tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10 images: training rows in bf16 only, validation and test in fp32 only, pooled and spatial maps alike; a
    second run runs the network on none of them."""
    from transferlab.features.extract import _Forward

    passes: list[tuple[str, int]] = []
    run = _Forward._run
    monkeypatch.setattr(
        _Forward, "_run", lambda self, chunk: passes.append((self.precision, len(chunk))) or run(self, chunk)
    )
    data = make_class_folder(tmp_path / "data", per_class=5, classes=("red", "green"))
    config = RunConfig(str(data), TINY_BACKBONE, str(tiny_weights), image_size=TINY_SIZE, workers=0, device="cpu")

    def images_by_precision() -> dict[str, int]:
        counts = {name: sum(n for p, n in passes if p == name) for name in ("bf16", "fp32")}
        passes.clear()
        return counts

    prepared = prepare(config, cache_dir=tmp_path / "cache", progress=False)
    held = len(prepared.split.indices("val")) + len(prepared.split.indices("test"))
    assert prepared.extraction.precision == "bf16" and len(prepared.hashes) == 10 and 0 < held < 10
    assert images_by_precision() == {"bf16": 10 - held, "fp32": held}  # 10 forward passes, not 10 + held
    prepared.maps()
    assert images_by_precision() == {"bf16": 10 - held, "fp32": held}  # the maps' one extra pass, the same way
    again = prepare(config, cache_dir=tmp_path / "cache", progress=False)
    again.maps()
    assert images_by_precision() == {"bf16": 0, "fp32": 0}


@pytest.mark.parametrize("precision", [FP32, Precision("bf16", 0.999)])
def test_forward_passes_of_8_at_224_px_cache_the_same_bits_as_passes_of_32(
    tmp_path: Path, precision: Precision, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Passes of 8 at 224 px (the CPU default: a quarter of the activations of 32) cache bit-identical
    features, so caches stay valid and results do not change: 17 images run as 6 + 6 + 5, never 8 + 8 + 1 (a lone
    fp32 image differs by ~1e-6)."""
    from transferlab import devices

    backbone = load_backbone(DEFAULT_BACKBONE, image_size=224)
    monkeypatch.delenv("TRANSFERLAB_FORWARD_PIXELS", raising=False)
    assert devices.forward_batch_size(devices.CPU, 224) == 8 and devices.forward_batch_size(devices.CPU, 96) == 43
    assert devices.forward_batch_size(torch.device("cuda"), 224) is None
    monkeypatch.setenv("TRANSFERLAB_FORWARD_PIXELS", "0")
    assert devices.forward_batch_size(devices.CPU, 224) is None  # the whole batch
    monkeypatch.delenv("TRANSFERLAB_FORWARD_PIXELS")
    paths = _files(tmp_path / "img", n=17)
    digests = [content_hash(p) for p in paths]
    loaded = []
    for batch_size in (32, None):  # None: the default batch of 32, in passes of 8 at 224 px
        cache = feature_cache(backbone, tmp_path / f"cache-{batch_size}", precision)
        report = extract_features(
            backbone, paths, digests, cache, precision=precision, workers=0, progress=False, batch_size=batch_size
        )
        assert report.computed == len(paths)
        loaded.append(cache.load(digests, list(backbone.cut_dims)))
    assert report.batch_size == 8
    for name in loaded[0]:
        assert np.array_equal(loaded[0][name], loaded[1][name]), name


def test_features_read_split_by_split_equal_the_whole_matrix_split(
    tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each split is read straight from the shards (bf16 train rows, fp32 held-out rows): the same arrays as every
    row's matrix read at once and then split, for a single and a joined cut point."""
    from transferlab.backbones.cut import cut_parts, deep_join
    from transferlab.data.split import SPLITS
    from transferlab.features.extract import load_features

    config = RunConfig(
        str(make_class_folder(tmp_path / "data")), TINY_BACKBONE, str(tiny_weights), image_size=TINY_SIZE
    )
    monkeypatch.setattr("transferlab.prepare.decide_precision", lambda *_: Precision("bf16", 0.999))
    prepared = prepare(config, cache_dir=tmp_path / "cache", progress=False)
    assert prepared.held_out is not None
    for cut_point in ("head", deep_join(prepared.backbone.model)):
        parts = [load_features(prepared.cache, prepared.held_out, prepared.hashes, p) for p in cut_parts(cut_point)]
        whole = np.concatenate(parts, axis=1)
        by_split = prepared.features(cut_point)
        for split_name in SPLITS:
            expected = whole[prepared.split.indices(split_name)]
            assert by_split[split_name].dtype == expected.dtype
            np.testing.assert_array_equal(by_split[split_name], expected)
