"""A Flower app written the way Flower's PyTorch quickstart writes one, knowing nothing of
murmuration: its own model (an nn.Sequential 64-32-10, state-dict keys 0.weight ... 2.bias), its
own data split of digits, its own training loop; a ClientApp and a ServerApp running Flower's
stock FedAvg. The tests run it against the bridge's apps in both directions."""
import numpy as np
import torch
from torch import nn


class Net(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def load_partition(partition_id: int, num_partitions: int):
    """This app's own split: digits shuffled once, cut in equal parts; the last 360 rows test."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(42).permutation(len(y))
    X, y = torch.tensor(X[order] / 16.0, dtype=torch.float32), torch.tensor(y[order])
    if partition_id < 0:
        return X[-360:], y[-360:]
    part = np.array_split(np.arange(len(y) - 360), num_partitions)[partition_id]
    return X[part], y[part]


def accuracy(net: nn.Module) -> float:
    X, y = load_partition(-1, 1)
    with torch.no_grad():
        return float((net(X).argmax(1) == y).float().mean())


def client_app():
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg, context):
        net = Net()
        net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        X, y = load_partition(int(context.node_config["partition-id"]), int(context.node_config["num-partitions"]))
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        for _ in range(3):  # epochs
            for i in range(0, len(y), 16):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(net(X[i:i + 16]), y[i:i + 16])
                loss.backward()
                opt.step()
        content = RecordDict({"arrays": ArrayRecord(net.state_dict()),
                              "metrics": MetricRecord({"train_loss": loss.item(), "num-examples": len(y)})})
        return Message(content, reply_to=msg)

    return app


def server_app(out_path: str, rounds: int = 3):
    """Flower's FedAvg from this app's own initial Net; saves the final arrays to `out_path`."""
    from flwr.app import ArrayRecord
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg

    app = ServerApp()

    @app.main()
    def main(grid, context):
        strategy = FedAvg(fraction_evaluate=0.0)
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(Net().state_dict()), num_rounds=rounds)
        np.savez(out_path, **{k: v.numpy() for k, v in result.arrays.to_torch_state_dict().items()})

    return app
