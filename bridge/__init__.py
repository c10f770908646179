"""The Flower bridge: the simulator's protocols on a real fleet (Flower 1.42, Message API).

The bridge is the second engine, beside `simulator/`: both run the World that `scenarios`
assembles and the protocols' own math; nothing below them imports either.

One Flower App (pyproject's [tool.flwr.app]): `server.app` and `client.app`. The scenario
(protocol, topology, data split, model, training, seed) is the run config's `overrides`, the
same Hydra overrides `murmur` takes, so simulator and fleet run one config; a SuperNode's
`partition-id` is its simulator node id. `fedavg` runs under Flower's FedAvg strategy; federated
`m2n2` keeps its archive on the server and asks the nodes for partial sums (see `archive`);
every protocol with a per-node merge rule runs through a relay on the server (see `relay`),
since Flower has no client-to-client channel. `launch` starts a SuperLink and SuperNodes on loopback
to try it on one machine. Needs the `flower` extra: pip install -e ".[flower]".

    scenario  the scenario as every process assembles it (its World and protocol)
    wire      a model row as an ArrayRecord, and the checks every received model passes
    relay     the server relay for protocols with a per-node merge rule
    archive   federated M2N2: the archive at the server, the scores at the nodes
    client    the ClientApp             server  the ServerApp        launch  local fleet
"""
