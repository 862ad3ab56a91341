"""One device concept: resolution and its errors, the precision choice, out-of-memory halving, device-independent
checkpoints and ONNX providers on the CPU; the same paths on a real GPU in the ``cuda``-marked tests (skipped
without one, with the reason)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_BACKBONE, TINY_SIZE, make_class_folder
from PIL import Image

from transferlab import devices
from transferlab.backbones import load_backbone
from transferlab.backbones.model import Backbone
from transferlab.cli import main
from transferlab.config import RunConfig
from transferlab.errors import TransferlabError
from transferlab.export.onnx import execution_providers
from transferlab.features.cache import content_hash
from transferlab.features.extract import FP32, extract_features, feature_cache
from transferlab.finetune import FinetuneOptions, finetune
from transferlab.finetune.checkpoint import load_checkpoint, save_checkpoint
from transferlab.prepare import prepare
from transferlab.search.data import HeadData
from transferlab.search.placement import place_trials

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run scripts/gpu-check.sh there)")
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour of a machine without a GPU")


@no_gpu
def test_auto_is_the_cpu_here_and_absent_devices_are_one_line_errors() -> None:
    assert devices.resolve_device("auto") == devices.resolve_device(None) == torch.device("cpu")
    assert devices.resolve_device(" CPU ") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(TransferlabError, match=rf"--device {name}: no CUDA GPU is visible here \(available: cpu"):
            devices.resolve_device(name)
    if not torch.backends.mps.is_available():
        with pytest.raises(TransferlabError, match="Apple MPS is not available here"):
            devices.resolve_device("mps")
    with pytest.raises(TransferlabError, match="--device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"):
        devices.resolve_device("gpu")


def test_auto_prefers_cuda_and_a_missing_gpu_index_names_the_ones_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert devices.resolve_device("auto") == torch.device("cuda", 0)
    assert devices.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(TransferlabError, match=r"there is no GPU 2 \(available: cpu, cuda:0, cuda:1"):
        devices.resolve_device("cuda:2")


def test_config_validates_the_device_spelling_and_resolves_it_only_when_the_run_starts() -> None:
    assert RunConfig(data="d", device="CUDA:0").device == "cuda:0"  # saved as asked: a rerun resolves it anew
    with pytest.raises(TransferlabError, match="got 'tpu'"):
        RunConfig(data="d", device="tpu")


@no_gpu
def test_cli_device_cuda_without_a_gpu_is_a_one_line_error(class_folder: Path, capsys) -> None:
    for command in (["run", str(class_folder)], ["finetune", str(class_folder)], ["search", str(class_folder)]):
        assert main([*command, "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --device cuda: no CUDA GPU") and err.count("\n") == 1


def test_precision_choice_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert devices.reduced_precision(cpu) == ("bf16" if torch.backends.mkldnn.is_available() else None)
    assert devices.training_precision(cpu) == "fp32"  # CPU fine-tuning keeps its fp32 results
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert devices.reduced_precision(gpu) == devices.training_precision(gpu) == "fp16"  # e.g. a T4 / V100
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert devices.reduced_precision(gpu) == devices.training_precision(gpu) == "bf16"
    assert devices.reduced_precision(torch.device("mps")) == "fp16"
    monkeypatch.setenv("TRANSFERLAB_FP32", "1")
    assert devices.reduced_precision(gpu) is None and devices.training_precision(gpu) == "fp32"


def test_onnx_uses_the_cuda_provider_only_for_a_gpu_that_onnxruntime_supports() -> None:
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert execution_providers(torch.device("cuda", 1), both) == [
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]
    assert execution_providers(torch.device("cuda", 0), ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert execution_providers(torch.device("cpu"), both) == ["CPUExecutionProvider"]


def _images(folder: Path, n: int = 10) -> tuple[list[Path], list[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    paths = []
    for i in range(n):
        paths.append(folder / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(paths[-1])
    return paths, [content_hash(p) for p in paths]


def test_out_of_memory_halves_the_batch_once_and_loses_nothing(
    tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    backbone = load_backbone(TINY_BACKBONE, tiny_weights, image_size=32)
    paths, digests = _images(tmp_path / "img")
    options = {"precision": FP32, "batch_size": 8, "workers": 0, "progress": False}
    reference = feature_cache(backbone, tmp_path / "a", FP32)
    extract_features(backbone, paths, digests, reference, **options)

    real = Backbone.features
    sizes: list[int] = []

    def small_device(self: Backbone, images: torch.Tensor) -> dict[str, torch.Tensor]:
        sizes.append(len(images))
        if len(images) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, images)

    monkeypatch.setattr(Backbone, "features", small_device)
    halved = feature_cache(backbone, tmp_path / "b", FP32)
    with caplog.at_level(logging.WARNING, logger="transferlab"):
        report = extract_features(backbone, paths, digests, halved, **options)
    assert report.computed == len(paths) and report.batch_size == 2 and sizes[:3] == [8, 4, 2]
    assert max(sizes[3:]) == 2  # later batches go straight to the size that fitted
    said = [r.message for r in caplog.records if "out of memory" in r.message]
    assert said == ["out of memory on cpu with batches of 8: halving them until they fit"]
    # (fp32 convolutions may sum in another order at another batch size: equal to float rounding, not bit for bit)
    np.testing.assert_allclose(
        halved.load(digests, ["head"])["head"], reference.load(digests, ["head"])["head"], rtol=1e-4, atol=1e-7
    )

    def no_memory(self: Backbone, images: torch.Tensor) -> dict[str, torch.Tensor]:
        raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate ... out of memory")

    monkeypatch.setattr(Backbone, "features", no_memory)
    with pytest.raises(TransferlabError, match="out of memory on cpu even for one image"):
        extract_features(backbone, paths, digests, feature_cache(backbone, tmp_path / "c", FP32), **options)


def test_checkpoints_are_host_tensors_whatever_device_trained(tmp_path: Path) -> None:
    weights = {"w": torch.randn(3, 2), "b": torch.arange(3.0)}
    save_checkpoint(tmp_path / "ck.safetensors", weights, {"epoch": 1})
    tensors, meta = load_checkpoint(tmp_path / "ck.safetensors")
    assert meta == {"epoch": 1} and {t.device.type for t in tensors.values()} == {"cpu"}
    assert all(torch.equal(tensors[k], weights[k]) for k in weights)


def test_runs_record_the_device_and_search_trials_stay_on_the_cpu_here(
    tmp_path: Path, tiny_weights: Path, capsys
) -> None:
    data = make_class_folder(tmp_path / "data", per_class=8)
    config = RunConfig(data=str(data), backbone=TINY_BACKBONE, weights=str(tiny_weights), image_size=TINY_SIZE)
    prepared = prepare(replace(config, device="cpu", workers=0), cache_dir=tmp_path / "cache", progress=False)
    facts = prepared.facts()["device"]
    assert facts["device"] == "cpu" and facts["cores"] >= 1 and facts["precision"] in ("bf16", "fp32")
    head_data = HeadData.from_prepared(prepared)
    placed, record = place_trials(head_data, prepared.device)
    assert placed is head_data and record["device"] == "cpu"


@cuda
def test_cuda_extraction_matches_the_cpu_within_the_precision_bound(tmp_path: Path, tiny_weights: Path) -> None:
    paths, digests = _images(tmp_path / "img")
    backbone = load_backbone(TINY_BACKBONE, tiny_weights, image_size=32)
    cpu = feature_cache(backbone, tmp_path / "cpu", FP32)
    extract_features(backbone, paths, digests, cpu, precision=FP32, workers=0, progress=False)
    gpu_precision = replace(FP32, device="cuda")
    gpu = feature_cache(backbone, tmp_path / "gpu", gpu_precision)
    report = extract_features(
        backbone, paths, digests, gpu, precision=gpu_precision, device=torch.device("cuda"), workers=0, progress=False
    )
    assert report.device == "cuda" and cpu.key != gpu.key
    a, b = (torch.as_tensor(c.load(digests, ["head"])["head"]) for c in (cpu, gpu))
    assert float(torch.nn.functional.cosine_similarity(a, b).min()) > 0.999


@cuda
def test_fine_tuning_on_a_gpu_resumes_on_the_cpu(tmp_path: Path, tiny_weights: Path) -> None:
    data = make_class_folder(tmp_path / "data", per_class=10)
    config = RunConfig(data=str(data), backbone=TINY_BACKBONE, weights=str(tiny_weights), image_size=TINY_SIZE)
    options = {"augment": "none", "batch_size": 8, "head_epochs": 2, "epochs": 1, "unfreeze": "top:1"}

    class Interrupted(Exception):
        pass

    def stop(stage: dict, entry: dict) -> None:
        raise Interrupted

    on_gpu = prepare(replace(config, device="cuda", workers=0), cache_dir=tmp_path / "cache", progress=False)
    with pytest.raises(Interrupted):
        finetune(on_gpu, tmp_path / "run", FinetuneOptions(**options), on_epoch=stop)
    on_cpu = prepare(replace(config, device="cpu", workers=0), cache_dir=tmp_path / "cache", progress=False)
    outcome = finetune(on_cpu, tmp_path / "run", FinetuneOptions(**options, resume=True))
    record = json.loads((tmp_path / "run" / "finetune.json").read_text())
    assert [s["name"] for s in record["stages"]] == ["head", "top:1"] and outcome.metrics["val"]["n"] > 0
