"""Both directions of Flower interop under Flower's Ray simulation, in one process (one import
of Flower and Ray for both; run by tests/test_flower.py with a timeout, as a process group):

1. the bridge's ClientApp under a stock Flower FedAvg ServerApp that sends its own tensor names
   (quickstart_app.server_app): the final arrays go to OUT/stock_server.npz;
2. a quickstart-style ClientApp under the bridge's fedavg ServerApp, the scenario naming the
   app's own model class (model=quickstart_app.Net): metrics go to OUT/bridge_server/summary.json.

    python tests/flower_sim.py OUT
"""
import sys
from pathlib import Path

import quickstart_app
from flwr.simulation import run_simulation

from bridge.client import client_app
from bridge.server import server_app

NODES = 4
RESOURCES = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    scenario = f"protocol=fedavg nodes={NODES} rounds=3 model=mlp model.hidden=[32] train.local_epochs=3"
    run_simulation(server_app=quickstart_app.server_app(str(out / "stock_server.npz")),
                   client_app=client_app({"overrides": scenario}), num_supernodes=NODES, backend_config=RESOURCES)
    fixed = {"overrides": f"protocol=fedavg nodes={NODES} rounds=3 model=quickstart_app.Net",
             "out-dir": str(out / "bridge_server"), "connect-timeout": 60.0, "round-timeout": 120.0}
    run_simulation(server_app=server_app(fixed), client_app=quickstart_app.client_app(), num_supernodes=NODES,
                   backend_config=RESOURCES)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
