"""device=auto: CUDA only for passes big enough to repay its fixed cost (sweeplr.fitting)."""

from __future__ import annotations

import pytest
import torch

from sweeplr import fitting
from sweeplr.config import run_spec
from sweeplr.fitting import (
    AUTO_CUDA_MIN_EPOCH_WORK,
    AUTO_CUDA_MIN_WORK,
    DeviceData,
    Workload,
    auto_device,
    resolve_device,
)
from tests.conftest import compose_config

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize(
    ("workload", "expected"),
    [
        (Workload(670, 2, 1, 1000), "cpu"),  # blobs: launch overhead would dominate
        (Workload(670, 2, 64, 100_000), "cpu"),  # much work, but every epoch tiny
        (Workload(455, 30, 64, 1000), "cpu"),  # breast_cancer grid: under a CPU second
        (Workload(10_000_000, 100, 1, 100), "cuda"),  # the synthetic data
        (Workload(10_000_000, 100, 64, 100), "cuda"),
        (Workload(1_000_000, 100, 1, 10), "cpu"),  # 1e9: the CPU's 0.6 s beats CUDA's start
        (None, "cuda"),  # size unknown: as before
    ],
)
def test_auto_device_with_cuda(workload: Workload | None, expected: str) -> None:
    assert auto_device(workload, cuda_available=True).type == expected
    assert auto_device(workload, cuda_available=False).type == "cpu"


def test_crossover_boundaries() -> None:
    epochs = 1000
    per_epoch = AUTO_CUDA_MIN_WORK / epochs  # above the per-epoch bar
    assert per_epoch > AUTO_CUDA_MIN_EPOCH_WORK
    at = Workload(int(per_epoch), 1, 1, epochs)
    assert auto_device(at, cuda_available=True).type == "cpu"  # strictly more is needed
    over = Workload(int(per_epoch), 1, 1, epochs + 1)
    assert auto_device(over, cuda_available=True).type == "cuda"


def test_resolve_device_auto_uses_torch_cuda_availability(monkeypatch: pytest.MonkeyPatch) -> None:
    big, small = Workload(10_000_000, 100, 64, 100), Workload(670, 2, 1, 1000)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", big) == torch.device("cuda")
    assert resolve_device("auto", small) == torch.device("cpu")
    assert resolve_device("cpu", big) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", big) == torch.device("cpu")


def test_blobs_stays_on_the_cpu_with_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default config (blobs, device=auto) on a machine with CUDA: the data stays on the
    CPU, and the pass's size is what decided (the spec's K and epochs, cv folds counted)."""
    seen: list[Workload | None] = []
    real = fitting.resolve_device

    def spy(name: str, workload: Workload | None = None) -> torch.device:
        seen.append(workload)
        return real(name, workload)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(fitting, "resolve_device", spy)
    spec = run_spec(compose_config("device=auto", "cv=5"))
    data = DeviceData.load(spec, configs=3)
    assert data.device == torch.device("cpu")
    assert spec.device == "auto"
    (workload,) = seen
    assert workload is not None
    assert workload.configs == 15 and workload.epochs == spec.epochs
    assert workload.rows == data.train[0].shape[0] and workload.features == 2


@cuda
@pytest.mark.cuda
def test_auto_device_on_a_gpu() -> None:
    assert resolve_device("auto", Workload(10_000_000, 100, 64, 100)).type == "cuda"
    assert resolve_device("auto", Workload(670, 2, 1, 1000)).type == "cpu"
