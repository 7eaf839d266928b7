"""Machine-checked security claims: the Tamarin theories in ``proofs/`` and their tooling.

- :mod:`d2tls.prove.runner` runs ``tamarin-prover`` per lemma and parses its verdicts;
- :mod:`d2tls.prove.consistency` checks the theories' rules against ``spec/`` both ways;
- :mod:`d2tls.prove.syntax` parses ``.spthy`` files with the Tree-sitter Spthy grammar;
- :mod:`d2tls.prove.cli` is ``d2tls prove``.
"""
