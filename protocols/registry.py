"""The protocol registry: every `Protocol` subclass that sets `name` joins it when its class is
defined, in the package or in a user's own module. `get` finds a protocol by its name, or by
its import path `module.Class` (the module is imported, from the current directory or
sys.path), which is how `murmur protocol=my_rules.MedianGossip` runs a protocol that lives
outside the package.
"""
from __future__ import annotations

import importlib
import os
import sys
from dataclasses import is_dataclass

_PROTOCOLS: dict[str, type] = {}   # name -> class, in registration order
_BY_PATH: dict[str, type] = {}     # "module.Class" -> class, for those found by import path


class ProtocolError(ValueError):
    """A protocol that cannot be found or registered; one line naming the problem."""


def register(cls: type) -> type:
    """Add a Protocol subclass under `cls.name` (its `config` must be a dataclass deriving from
    protocols.ProtocolConfig). Re-defining the same class (a reloaded module) replaces it."""
    from protocols.base import ProtocolConfig

    config = getattr(cls, "config", None)
    if not (isinstance(config, type) and is_dataclass(config) and issubclass(config, ProtocolConfig)):
        raise ProtocolError(f"protocol {cls.__qualname__}: `config` must be a @dataclass deriving from "
                            f"protocols.ProtocolConfig, got {config!r}")
    if getattr(cls, "receives", "sum") not in ("sum", "models"):
        raise ProtocolError(f"protocol {cls.__qualname__}: receives must be 'sum' or 'models', got {cls.receives!r}")
    old = _PROTOCOLS.get(cls.name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ProtocolError(f"protocol name {cls.name!r} is taken by {old.__module__}.{old.__qualname__}; "
                            "choose another name")
    _PROTOCOLS[cls.name] = cls
    return cls


def import_object(path: str, what: str):
    """The object at import path `module.attr` (the current directory counts as on sys.path)."""
    module, _, attr = path.rpartition(".")
    if not module or not attr:
        raise ProtocolError(f"{what} {path!r} is not an import path module.Name")
    cwd = os.getcwd()
    if cwd not in sys.path:  # `murmur` is a console script: its sys.path lacks the working directory
        sys.path.append(cwd)
    try:
        mod = importlib.import_module(module)
    except ProtocolError:
        raise
    except Exception as err:  # not found, or the module itself fails: say which, in one line
        detail = str(err).splitlines()[0] if str(err) else ""
        raise ProtocolError(f"{what} {path!r}: cannot import {module!r} ({type(err).__name__}: {detail})") from None
    if not hasattr(mod, attr):
        raise ProtocolError(f"{what} {path!r}: module {module!r} has no {attr!r}")
    return getattr(mod, attr)


def get(name: str) -> type:
    """The protocol class registered as `name`, or found at import path `name`."""
    from protocols.base import Protocol

    if name in _PROTOCOLS:
        return _PROTOCOLS[name]
    if name in _BY_PATH:
        return _BY_PATH[name]
    if not isinstance(name, str) or "." not in name:
        raise ProtocolError(f"unknown protocol {name!r}; choose one of: {', '.join(names())} "
                            "(or module.Class for a protocol of your own)")
    cls = import_object(name, "protocol")
    if not (isinstance(cls, type) and issubclass(cls, Protocol)):
        raise ProtocolError(f"protocol {name!r} is not a subclass of protocols.Protocol")
    if not cls.__dict__.get("name"):
        raise ProtocolError(f"protocol {name!r} sets no `name`; give the class a name = '...'")
    _BY_PATH[name] = cls
    return cls


def names() -> list[str]:
    """Registered protocol names, in registration order."""
    return list(_PROTOCOLS)
