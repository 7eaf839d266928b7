"""Attacker models for d2tls: a hostile simulated network and a compromised security agent.

- :mod:`d2tls.sim` (beside this package): every role on a virtual clock; the adversary may
  drop, duplicate, reorder, delay, replay, modify and inject datagrams.
- :mod:`d2tls.adversary.observer`: integrity, epoch/sequence and failure invariants.
- :mod:`d2tls.adversary.world`: device, agent and server in one deterministic simulation.
- :mod:`d2tls.adversary.forge`: records built with keys the adversary knows.
- :mod:`d2tls.adversary.compromised`: the compromised-agent cases and their outcomes.
- :mod:`d2tls.adversary.report`: writes docs/attacker-outcomes.md.
- :mod:`d2tls.adversary.fuzz`: atheris harnesses (``python -m d2tls.adversary.fuzz``).
"""
