"""The tutorial's own training loop (../shared/seed), re-implemented as it is written there.

    python bench/tutorial_loop.py --epochs 200000

``torch.sigmoid`` + ``nn.BCELoss`` + ``torch.optim.SGD(lr=0.01)``, full batch, on the same data
and split as ``python train.py experiment=seed`` (blobs, ``train_test_split(test_size=0.33,
random_state=42)``, no scaling), starting from the same initial weights (``manual_seed(0)``).
Prints the final training loss. Used by bench_sweeps.py; not part of sweeplr.
"""

import argparse

import torch
from sklearn.model_selection import train_test_split

from sweeplr.data import make_blobs


class LogisticRegression(torch.nn.Module):
    def __init__(self, input_dim: int, output_dim: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(input_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(x))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=200_000)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as sweeplr does on data this small: a fair comparison
    table = make_blobs()
    X_train, _, y_train, _ = train_test_split(table.X, table.y, test_size=0.33, random_state=42)
    X_train, y_train = torch.Tensor(X_train), torch.Tensor(y_train)
    torch.manual_seed(0)
    model = LogisticRegression(2, 1)
    criterion = torch.nn.BCELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(args.epochs):
        optimizer.zero_grad()
        loss = criterion(torch.squeeze(model(X_train)), y_train)
        loss.backward()
        optimizer.step()
    print(f"final_train_loss {loss.item():.8f}")


if __name__ == "__main__":
    main()
