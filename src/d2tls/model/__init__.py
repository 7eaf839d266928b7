"""The protocol spec (``spec/*.yaml``) turned into explicit state machines and diagrams."""

from d2tls.model.machine import Handlers, MachineDriver, SpecMachine
from d2tls.model.spec import RoleSpec, Spec, TransitionSpec, load_spec

__all__ = [
    "Handlers",
    "MachineDriver",
    "RoleSpec",
    "Spec",
    "SpecMachine",
    "TransitionSpec",
    "load_spec",
]
