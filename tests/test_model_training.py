import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss

from sweeplr.data import load_iris, make_blobs, scale_splits, split
from sweeplr.model import LogisticRegression, loss_on_logits
from sweeplr.training import TorchOptimizer, evaluate, train


def blob_tensors():
    splits, _ = scale_splits(split(make_blobs()), standardize=True)
    t = torch.from_numpy
    return splits, t(splits.X_train), t(splits.y_train), t(splits.X_val), t(splits.y_val)


def test_binary_model_has_one_logit_and_two_probability_columns():
    model = LogisticRegression(2, 2)
    x = torch.randn(5, 2)
    assert model(x).shape == (5, 1)
    proba = model.predict_proba(x)
    assert proba.shape == (5, 2)
    torch.testing.assert_close(proba.sum(-1), torch.ones(5))


def test_multiclass_model_is_multinomial():
    model = LogisticRegression(4, 3)
    assert model(torch.randn(5, 4)).shape == (5, 3)


def test_loss_on_logits_matches_sklearn_log_loss_and_stays_finite():
    logits = torch.tensor([[3.0], [-2.0], [0.5]])
    y = torch.tensor([1, 0, 0])
    p1 = torch.sigmoid(logits).squeeze(-1).numpy()
    expected = log_loss(y.numpy(), np.stack([1 - p1, p1], 1))
    assert loss_on_logits(logits, y).item() == pytest.approx(expected, rel=1e-5)
    # sigmoid + BCELoss would give log(0) here; on logits the loss is large but finite.
    assert math.isfinite(loss_on_logits(torch.tensor([[200.0]]), torch.tensor([0])).item())


def test_training_separates_blobs():
    _, Xt, yt, Xv, yv = blob_tensors()
    torch.manual_seed(0)
    model = LogisticRegression(2, 2)
    result = train(model, Xt, yt, Xv, yv, TorchOptimizer("sgd", lr=0.5), epochs=200)
    assert result.status == "completed" and result.epochs_run == 200
    assert result.history["epoch"] == [1, 2, 5, *range(10, 201, 10)]  # early rows, then every 10
    assert result.history["train_loss"][-1] < result.history["train_loss"][0]
    assert evaluate(model, Xv, yv)["accuracy"] > 0.97


@pytest.mark.parametrize(
    "spec",
    [
        TorchOptimizer("sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
        TorchOptimizer("adam", lr=0.05, betas=(0.8, 0.99)),
        TorchOptimizer("adamw", lr=0.05, weight_decay=0.01),
    ],
)
def test_every_optimizer_trains_multiclass_minibatch(spec):
    splits, _ = scale_splits(split(load_iris(), stratify=True), standardize=True)
    t = torch.from_numpy
    torch.manual_seed(0)
    model = LogisticRegression(4, 3)
    result = train(
        model,
        t(splits.X_train),
        t(splits.y_train),
        t(splits.X_val),
        t(splits.y_val),
        spec,
        epochs=60,
        batch_size=16,
    )
    assert result.status == "completed"
    assert evaluate(model, t(splits.X_test), t(splits.y_test))["accuracy"] > 0.8


def test_same_seed_same_numbers_bit_for_bit():
    _, Xt, yt, Xv, yv = blob_tensors()
    weights = []
    for _ in range(2):
        torch.manual_seed(3)
        model = LogisticRegression(2, 2)
        train(
            model, Xt, yt, Xv, yv, TorchOptimizer("adam", lr=0.01), epochs=30, batch_size=64, seed=3
        )
        weights.append(model.linear.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


def test_divergence_is_a_status_with_the_first_bad_epoch():
    splits = split(make_blobs())  # unscaled, so a huge lr overflows quickly
    t = torch.from_numpy
    torch.manual_seed(0)
    model = LogisticRegression(2, 2)
    spec = TorchOptimizer("sgd", lr=1e38)
    result = train(
        model,
        t(splits.X_train),
        t(splits.y_train),
        t(splits.X_val),
        t(splits.y_val),
        spec,
        epochs=100,
        log_every=10,
    )
    assert result.status == "diverged"
    # Replay by hand to find the first epoch with a non-finite loss.
    torch.manual_seed(0)
    replay = LogisticRegression(2, 2)
    opt = spec.build(replay.parameters())
    epoch = 0
    while epoch < 100:
        epoch += 1
        opt.zero_grad()
        loss = loss_on_logits(replay(t(splits.X_train)), t(splits.y_train))
        if not torch.isfinite(loss):
            break
        loss.backward()
        opt.step()
    assert result.diverged_epoch == epoch == result.epochs_run


def test_on_log_can_stop_a_run():
    _, Xt, yt, Xv, yv = blob_tensors()
    seen = []

    def stop_at_30(epoch, train_loss, val_loss, val_acc):
        seen.append(epoch)
        return epoch >= 30

    result = train(
        LogisticRegression(2, 2), Xt, yt, Xv, yv, TorchOptimizer(), epochs=100, on_log=stop_at_30
    )
    assert result.status == "pruned" and result.epochs_run == 30 and seen == [10, 20, 30]
