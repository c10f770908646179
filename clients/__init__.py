"""What a client node is: datasets and streams, partitioners, device profiles, per-node data and
local training over rows of any stack (nodes.NodeData), and the default protocol state, one
model per node (fleet.Fleet)."""
