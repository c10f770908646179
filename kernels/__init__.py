"""Batched tensor math over node stacks. Pure torch: nothing here knows a node or a clock."""
from kernels.mixing import consensus_distance, gossip_merge, sum_rows_into, weighted_mean
from kernels.models import MLP, LeNet, LogisticRegression, SmallCNN
from kernels.random import counter_normal, counter_uniform, derive_seed
from kernels.stack import Layout, init_stack, row_blocks
from kernels.tasks import TASKS, Multiclass, Multilabel, Task
from kernels.train import BatchedModel, SGDConfig, full_batch_adam, local_sgd, sample_minibatches, sgd_update

__all__ = [
    "BatchedModel", "Layout", "LeNet", "LogisticRegression", "MLP", "Multiclass", "Multilabel", "SGDConfig",
    "SmallCNN", "TASKS", "Task",
    "consensus_distance", "counter_normal", "counter_uniform", "derive_seed", "full_batch_adam", "gossip_merge",
    "init_stack", "row_blocks",
    "local_sgd", "sample_minibatches", "sgd_update", "sum_rows_into", "weighted_mean",
]
