"""An in-process Flower Grid for tests: a pushed message is handled at once by the ClientApp of
the node it names, so a whole run takes milliseconds instead of a SuperLink's seconds per round.

`faults` maps a partition id to `fault(msg, reply) -> reply | None`, called on every reply of
that node: return a changed reply to corrupt it, None to lose it (a timeout), or raise to stand
for a crashed node (an error reply, as a SuperNode sends).
"""
from __future__ import annotations

import copy
import itertools

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity


class LocalGrid(Grid):
    def __init__(self, client_app, n: int, *, faults=None, run_config=None):
        # Message() reads the sender's identity from this process-global (set by Flower's runtimes)
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
        self.app = client_app
        self.faults = faults or {}
        # node ids unlike partition ids and in another order: the bridge must map them itself
        self.pid = {9000 - 7 * i: i for i in range(n)}
        self.contexts = {nid: Context(run_id=1, node_id=nid, state=RecordDict(), run_config=dict(run_config or {}),
                                      node_config={"partition-id": i, "num-partitions": n})
                         for nid, i in self.pid.items()}
        self.replies: dict[str, Message] = {}
        self.sent: list[Message] = []
        self._ids = itertools.count()

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self):
        return sorted(self.contexts)

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            mid = f"m{next(self._ids)}"
            msg.metadata.__dict__["_message_id"] = mid  # as Flower's own grids set it (no setter)
            msg = copy.deepcopy(msg)  # what the node gets is what was sent then (as over a wire)
            self.sent.append(msg)
            nid = msg.metadata.dst_node_id
            context = copy.deepcopy(self.contexts[nid])  # kept only if the node succeeds, as a SuperNode
            try:
                reply = self.app(msg, context)
                fault = self.faults.get(self.pid[nid])
                reply = fault(msg, reply) if fault else reply
                self.contexts[nid] = context
            except Exception as err:  # what a SuperNode does when its ClientApp raises
                reply = Message(Error(code=0, reason=f"{type(err).__name__}: {err}"), reply_to=msg)
            if reply is not None:
                self.replies[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids):
        return [self.replies.pop(m) for m in message_ids if m in self.replies]

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))
