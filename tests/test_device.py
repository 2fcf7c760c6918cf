"""device=auto: CUDA only for passes big enough to repay its fixed cost (sweeplr.fitting)."""

from __future__ import annotations

import pytest
import torch

from sweeplr import fitting
from sweeplr.batched import OptimizerConfig, epochs, linear_init, train_batched
from sweeplr.batched import steps as dispatch
from sweeplr.batched.first_order import FirstOrderRun
from sweeplr.fitting import (
    AUTO_CUDA_MIN_EPOCH_WORK,
    AUTO_CUDA_MIN_WORK,
    DeviceData,
    Workload,
    auto_device,
    resolve_device,
)
from sweeplr.spec import run_spec
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


# ----- CUDA graphs of plain epochs (batched.epochs.GraphedEpochs) -----------------------------

OPTIMIZERS = [
    OptimizerConfig("sgd", [0.1, 0.5, 2.0]),
    OptimizerConfig("sgd", [0.1, 0.5, 2.0], momentum=0.9, nesterov=True),
    OptimizerConfig("sgd", 0.3, momentum=0.5, dampening=0.1, weight_decay=1e-3),
    OptimizerConfig("adam", [1e-3, 1e-2, 1e-1]),
    OptimizerConfig("adamw", [1e-3, 1e-2, 1e-1], weight_decay=0.1),
]


def _blobs_like(n: int = 67, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    X = torch.randn(n, 2, generator=g)
    y = (X[:, 0] + 0.3 * torch.randn(n, generator=g) > 0).long()
    return X.to(device), y.to(device)


def _run(X: torch.Tensor, y: torch.Tensor, opt: OptimizerConfig, k: int, **kw: object):
    weight, bias = linear_init(X.shape[1], 2, list(range(k)))
    options: dict = {"log_every": 50, **kw}
    return train_batched(X, y, 2, weight.to(X.device), bias.to(X.device), opt, 157, **options)


@pytest.mark.parametrize("opt", OPTIMIZERS)
@pytest.mark.parametrize("check_every", [10, 7, 200])
def test_graph_bodies_equal_the_eager_epochs(
    monkeypatch: pytest.MonkeyPatch, opt: OptimizerConfig, check_every: int
) -> None:
    """The graphs' bookkeeping on the CPU (bodies run eagerly, as a replay runs them): Adam's
    factors per chunk, SGD's first momentum step, ring columns -- bit for bit the eager run,
    over chunks of several lengths (logged epochs at 50, 100, 150, the end at 157)."""
    X, y = _blobs_like()
    k = 1 if isinstance(opt.lr, float) else 3
    eager = _run(X, y, opt, k, check_every=check_every)
    built: list[epochs.GraphedEpochs] = []
    real_init = epochs.GraphedEpochs.__init__

    def spy(self, *args):
        built.append(self)
        real_init(self, *args)

    monkeypatch.setattr(epochs.GraphedEpochs, "__init__", spy)
    monkeypatch.setattr(dispatch, "_GRAPHS_ON_CPU", True)
    graphed = _run(X, y, opt, k, check_every=check_every)
    assert built and built[0].entries  # the graph path ran
    assert torch.equal(graphed.weight, eager.weight)
    assert torch.equal(graphed.bias, eager.bias)
    torch.testing.assert_close(graphed.history.train_loss, eager.history.train_loss, rtol=0, atol=0)
    assert graphed.status == eager.status


def test_graph_path_follows_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    """A configuration that diverges is dropped; the graphs are rebuilt for the new batch."""
    X, y = _blobs_like()
    X[3, 0] = 1e30
    opt = OptimizerConfig("adam", [1e-3, 1e30, 1e-2])
    eager = _run(X, y, opt, 3)
    monkeypatch.setattr(dispatch, "_GRAPHS_ON_CPU", True)
    graphed = _run(X, y, opt, 3)
    assert graphed.status == eager.status == ["completed", "diverged", "completed"]
    assert graphed.diverged_epoch == eager.diverged_epoch
    assert torch.equal(graphed.weight[[0, 2]], eager.weight[[0, 2]])


def test_graphs_do_not_apply() -> None:
    X, y = _blobs_like()
    weight, bias = linear_init(2, 2, [0])
    opt = OptimizerConfig("sgd", 0.1)
    run = FirstOrderRun(X, y, 2, weight, bias, opt, None, 0, None)
    assert not run.workspace(X.shape[0]).chosen.graph  # on the CPU
    device = "cuda" if torch.cuda.is_available() else "cpu"
    Xd, yd, wd, bd = (t.to(device) for t in (X, y, weight, bias))
    mini = FirstOrderRun(Xd, yd, 2, wd, bd, opt, 8, 0, None)
    assert not mini.workspace(8).chosen.graph  # mini-batches


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_cuda_graphs_equal_eager_cuda(
    monkeypatch: pytest.MonkeyPatch, opt: OptimizerConfig
) -> None:
    X, y = _blobs_like(670, "cuda")
    k = 1 if isinstance(opt.lr, float) else 3
    with_graphs = _run(X, y, opt, k)
    monkeypatch.setattr(dispatch, "_GRAPH_MAX_ELEMENTS", 0)
    eager = _run(X, y, opt, k)
    assert torch.equal(with_graphs.weight, eager.weight)
    assert torch.equal(with_graphs.history.train_loss, eager.history.train_loss)
    cpu = _run(X.cpu(), y.cpu(), opt, k)  # 157 epochs in float32: summation orders differ
    torch.testing.assert_close(with_graphs.weight.cpu(), cpu.weight, rtol=1e-3, atol=1e-4)


def test_graph_cache_evicts_with_many_chunk_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checks every 7 epochs and logs every 5: chunks of many (start, length) shapes, more
    than the cache keeps; still the eager run's numbers."""
    X, y = _blobs_like()
    opt = OptimizerConfig("adam", [1e-3, 1e-2, 1e-1])
    kw = {"log_every": 5, "check_every": 7}
    eager = _run(X, y, opt, 3, **kw)
    built: list[epochs.GraphedEpochs] = []
    real_run_chunk = epochs.GraphedEpochs.run_chunk

    def spy(self, start, count):
        built.append((start, count))
        return real_run_chunk(self, start, count)

    monkeypatch.setattr(epochs.GraphedEpochs, "run_chunk", spy)
    monkeypatch.setattr(dispatch, "_GRAPHS_ON_CPU", True)
    graphed = _run(X, y, opt, 3, **kw)
    assert len(set(built)) > epochs._GRAPH_CACHE
    assert torch.equal(graphed.weight, eager.weight)
    assert torch.equal(graphed.history.train_loss, eager.history.train_loss)
