"""How a model travels: a [P] row as an ArrayRecord of named tensors, and the checks every
model that arrives must pass before it is used (and, for federated M2N2, the checks on a
node's partial sums: `read_partial`).

Flower apps written without murmuration name their tensors their own way (a quickstart's
`nn.Sequential` sends `0.weight ... 2.bias` where our MLP says `net.0.weight ...`). A record
whose names differ from the model's is matched by order and shape instead (logged once per
naming), and a reply goes back under the names the sender used.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message

from kernels import Layout

log = logging.getLogger("flwr.murmuration")
_MATCHED_BY_ORDER: set[tuple[str, ...]] = set()  # namings already logged


class BadReply(ValueError):
    """A reply (or forwarded model) that must not be used; the message says why, in one line."""


def to_record(row: torch.Tensor, layout: Layout, keys: list[str] | None = None) -> ArrayRecord:
    """One model row as an ArrayRecord keyed by parameter name (a torch state_dict's keys), or
    by `keys` (the names a sender used, in the layout's order)."""
    views = layout.unflatten(row.detach().to("cpu", torch.float32))
    names = list(keys) if keys is not None else list(layout.names)
    return ArrayRecord({name: Array(np.ascontiguousarray(v.numpy())) for name, v in zip(names, views.values())})


def record_keys(record: ArrayRecord, layout: Layout) -> list[str]:
    """The record's keys in the layout's order: by name when the names are the model's, else
    in the record's own order (a sender that names its tensors its own way)."""
    keys = list(record.keys())
    if set(keys) == set(layout.names):
        return list(layout.names)
    if len(keys) != layout.n_tensors:
        raise BadReply(f"arrays {keys} do not match the model's {layout.n_tensors} tensors {list(layout.names)}")
    if tuple(keys) not in _MATCHED_BY_ORDER and keys != [str(i) for i in range(layout.n_tensors)]:
        _MATCHED_BY_ORDER.add(tuple(keys))
        log.info("arrays named %s matched to the model's tensors %s by order and shape", keys, list(layout.names))
    return keys


def from_record(record: ArrayRecord, layout: Layout) -> torch.Tensor:
    """The [P] float32 row in `record`: keyed by parameter name, or else by order and shape (the
    layout's order; e.g. "0", "1", ..., what `ArrayRecord(list_of_ndarrays)` gives, or another
    app's names). Raises BadReply on a wrong count or shape or a value that is NaN or infinite."""
    arrays = [record[k] for k in record_keys(record, layout)]
    parts = []
    for name, shape, array in zip(layout.names, layout.shapes, arrays):
        try:
            a = array.numpy()
        except Exception as err:  # a corrupt payload: whatever numpy raised, it is unusable
            raise BadReply(f"{name} cannot be read: {err}") from None
        if tuple(a.shape) != shape:
            raise BadReply(f"{name} has shape {tuple(a.shape)}, the model needs {shape}")
        if not np.issubdtype(a.dtype, np.number):
            raise BadReply(f"{name} has dtype {a.dtype}, the model needs numbers")
        parts.append(torch.as_tensor(a.astype(np.float32, copy=False)).reshape(-1))
    row = torch.cat(parts)
    if not bool(torch.isfinite(row).all()):
        raise BadReply(f"{int((~torch.isfinite(row)).sum())} parameters are NaN or infinite")
    return row


def read_reply(msg: Message, layout: Layout, arrays_key: str = "arrays",
               weight_key: str | None = None) -> tuple[torch.Tensor, float | None]:
    """(model row, weight) of a training reply; the weight is the MetricRecord value under
    `weight_key` (e.g. "num-examples"), None when no key is asked for. Raises BadReply."""
    if msg.has_error():
        raise BadReply(f"error reply: {msg.error.reason}")
    if not msg.has_content():
        raise BadReply("empty reply")
    content = msg.content
    if arrays_key not in content.array_records:
        raise BadReply(f"no ArrayRecord {arrays_key!r} (has {sorted(content.keys())})")
    row = from_record(content.array_records[arrays_key], layout)
    if weight_key is None:
        return row, None
    found = [m[weight_key] for m in content.metric_records.values() if weight_key in m]
    if len(found) != 1:
        raise BadReply(f"needs one MetricRecord with {weight_key!r}, found {len(found)}")
    w = found[0]
    if isinstance(w, list) or not np.isfinite(w) or w <= 0:
        raise BadReply(f"{weight_key} must be a number > 0, got {w!r}")
    return row, float(w)


def read_partial(msg: Message, key: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """The arrays of a partial-sums reply (federated M2N2): ArrayRecord `key` with exactly the
    arrays named in `shapes`, each of that shape, numeric, finite and >= 0 (fitness, attraction
    and counts are sums of non-negative terms). Returns float64 arrays (int64 for integer
    arrays). Raises BadReply."""
    if msg.has_error():
        raise BadReply(f"error reply: {msg.error.reason}")
    if not msg.has_content():
        raise BadReply("empty reply")
    if key not in msg.content.array_records:
        raise BadReply(f"no ArrayRecord {key!r} (has {sorted(msg.content.keys())})")
    record = msg.content.array_records[key]
    if set(record.keys()) != set(shapes):
        raise BadReply(f"partial sums {sorted(record.keys())}, expected {sorted(shapes)}")
    out = {}
    for name, shape in shapes.items():
        try:
            a = record[name].numpy()
        except Exception as err:  # a corrupt payload
            raise BadReply(f"{name} cannot be read: {err}") from None
        if tuple(a.shape) != tuple(shape):
            raise BadReply(f"{name} has shape {tuple(a.shape)}, expected {tuple(shape)}")
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise BadReply(f"{name} has dtype {a.dtype}, expected numbers")
        a = a.astype(np.int64 if np.issubdtype(a.dtype, np.integer) else np.float64)
        if not np.isfinite(a).all() or (a < 0).any():
            raise BadReply(f"{name} holds values that are NaN, infinite or negative")
        out[name] = a
    return out
