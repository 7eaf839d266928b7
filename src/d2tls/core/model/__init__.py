"""The protocol spec (``spec/*.yaml``) turned into explicit state machines and diagrams.

:mod:`d2tls.core.model.machine` runs a role's machine through a typed handler table,
:mod:`d2tls.core.model.states` holds the state Enums generated from the spec.
"""

from d2tls.core.model.spec import RoleSpec, Spec, TransitionSpec, load_spec

__all__ = ["RoleSpec", "Spec", "TransitionSpec", "load_spec"]
