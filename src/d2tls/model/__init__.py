"""The protocol spec (``spec/*.yaml``) turned into explicit state machines and diagrams."""

from d2tls.model.machine import MachineDriver, build_machine
from d2tls.model.spec import RoleSpec, Spec, TransitionSpec, load_spec

__all__ = ["MachineDriver", "RoleSpec", "Spec", "TransitionSpec", "build_machine", "load_spec"]
