"""Communication topologies for the simulator."""

from topologies.graphs import (
    TOPOLOGIES,
    TopologyError,
    attach_links,
    build_graph,
    check_graph,
    edge_arrays,
    link_delay,
)

__all__ = ["TOPOLOGIES", "TopologyError", "attach_links", "build_graph", "check_graph", "edge_arrays", "link_delay"]
