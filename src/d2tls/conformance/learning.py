"""State-machine learning of a DTLS 1.2 server with AALpy (as DTLS-Fuzzer does, in Python).

A :class:`DTLSServerSUL` maps the abstract inputs of :data:`.specmodel.INPUTS` to concrete
messages made by a :class:`~.probe.Prober`, and the server's answers to abstract outputs
(``ServerHello+Certificate+...``, ``Alert(fatal,decrypt_error)``, ``TIMEOUT``). Every query
starts from a reset: a fresh client socket (a new port, so a new association) and, when the
peer can be restarted, a restarted server. A server the suite cannot restart (``reset`` is
None) is reset the way a client would leave it: each query ends its association with
close_notify (in every epoch written, as the server may not have switched; nothing after the
server ended it), the learner waits a settle delay, and a query that starts with a ClientHello
retransmits it on RFC 6347 §4.2.4 timers until the server, busy finishing an earlier
association, answers (a query it never answers is retried, not recorded as TIMEOUT).
Queries are cached; a query whose answer contradicts an earlier one is repeated and decided
by majority. AALpy's L# learns the Mealy machine, checked by
an equivalence oracle that first tries the input sequences where the hypothesis and the
spec-derived machine differ, then the spec's transition cover (which holds the complete
handshakes), then random walks from every state.
"""

from __future__ import annotations

import importlib
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from d2tls.conformance.mealy import Difference, Mealy, differences, from_aalpy, render_dot, to_dot
from d2tls.conformance.probe import (
    TIMEOUT,
    ClientCredentials,
    Prober,
    ResumableSession,
    RetransmissionTimer,
    Transport,
    full_handshake,
)
from d2tls.conformance.specmodel import INPUTS, ServerOptions, spec_machine
from d2tls.core.dtls.constants import CipherSuite
from d2tls.core.errors import D2TLSError

aalpy: Any = importlib.import_module("aalpy")
_lsharp: Any = importlib.import_module("aalpy.learning_algs.deterministic.LSharp")

TransportFactory = Callable[[], Transport]

#: ClientHello retransmission while learning a server that cannot be restarted.
LEARNING_TIMER = RetransmissionTimer(initial=1.0, retransmissions=3)


class ServerBusy(D2TLSError):
    """The server never answered a query's first ClientHello."""


class ProgressPrinter:
    """Prints one line at most every ``interval`` seconds (queries, states, elapsed)."""

    def __init__(self, stream: TextIO | None = sys.stderr, interval: float = 2.0) -> None:
        self.stream = stream
        self.interval = interval
        self.started = time.monotonic()
        self._last = 0.0
        self.states = 0

    def __call__(self, sul: DTLSServerSUL, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.stream is None or (not force and now - self._last < self.interval):
            return
        self._last = now
        print(
            f"  learning: {sul.queries} queries ({sul.cache_hits} cached, {sul.steps} steps), "
            f"hypothesis {self.states} states, {now - self.started:.1f} s",
            file=self.stream,
            flush=True,
        )


class DTLSServerSUL(aalpy.SUL):  # type: ignore[misc]
    """The server under learning, one abstract input at a time."""

    def __init__(
        self,
        transport_factory: TransportFactory,
        credentials: ClientCredentials,
        *,
        suite: CipherSuite = CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,
        reset: Callable[[], None] | None = None,
        wait: float = 0.15,
        gap: float = 0.03,
        dead_wait: float = 0.04,
        progress: Callable[..., None] | None = None,
        needs_session: bool = True,
        settle: float = 0.1,
        timer: RetransmissionTimer = LEARNING_TIMER,
        busy_retries: int = 3,
    ) -> None:
        super().__init__()
        self.transport_factory = transport_factory
        self.credentials = credentials
        self.suite = suite
        self.reset = reset
        self.wait, self.gap, self.dead_wait = wait, gap, dead_wait
        self.progress = progress
        self.needs_session = needs_session
        self.settle, self.timer, self.busy_retries = settle, timer, busy_retries
        self.busy = 0
        self._first_step = True
        self.session: ResumableSession | None = None
        self.prober: Prober | None = None
        self.dead = False
        self.cache: dict[tuple[str, ...], tuple[str, ...]] = {}
        self.queries = 0
        self.steps = 0
        self.cache_hits = 0
        self.nondeterministic = 0
        self.resets = 0

    # ------------------------------------------------------------------ session to resume
    def establish_session(self) -> ResumableSession | None:
        """A full handshake whose session the ClientHelloResume input offers later."""
        for _ in range(3):
            prober = Prober(self.transport_factory(), self.credentials, suite=self.suite)
            try:
                full_handshake(prober)
                if prober.handshake_complete:
                    prober.close_association(linger=self.wait)
                    return prober.session()
                prober.close_association(linger=self.wait)
            finally:
                prober.close()
                time.sleep(self.settle)
        return None

    # ------------------------------------------------------------------ AALpy interface
    def pre(self) -> None:
        if self.reset is not None:
            self.reset()
            self.resets += 1
            if self.needs_session:
                self.session = self.establish_session()
        elif self.session is None and self.needs_session:
            self.session = self.establish_session()
        self.prober = Prober(
            self.transport_factory(),
            self.credentials,
            suite=self.suite,
            wait=self.wait,
            gap=self.gap,
        )
        self.dead = False
        self._first_step = True

    def post(self) -> None:
        prober = self.prober
        if prober is None:
            return
        if self.reset is None:
            # Leave nothing half-open on a server that serves one client at a time: a
            # clean close (RFC 5246 §7.2.1), then a settle delay before the next query.
            if not self.dead:
                prober.close_association(linger=self.dead_wait)
            prober.close()
            time.sleep(self.settle)
        else:
            prober.close()
        self.prober = None

    def step(self, letter: str | None) -> str:
        prober = self.prober
        assert prober is not None and letter is not None
        self.steps += 1
        if letter == "ClientHello":
            prober.send_client_hello()
        elif letter == "ClientHelloResume":
            prober.send_client_hello(session=self.session)
        elif letter == "Certificate":
            prober.send_handshake(prober.certificate())
        elif letter == "EmptyCertificate":
            prober.send_handshake(prober.certificate(()))
        elif letter == "ClientKeyExchange":
            prober.send_client_key_exchange()
        elif letter == "CertificateVerify":
            prober.send_handshake(prober.certificate_verify())
        elif letter == "ChangeCipherSpec":
            prober.send_change_cipher_spec()
        elif letter == "Finished":
            prober.send_handshake(prober.finished())
        elif letter == "ApplicationData":
            prober.send_records([prober.application_data(b"ping\n")])
        elif letter == "Alert":
            prober.send_records([prober.alert_record()])
        else:
            raise ValueError(f"unknown input {letter}")
        wait = self.wait if not self.dead or letter.startswith("ClientHello") else self.dead_wait
        first, self._first_step = self._first_step, False
        if first and letter.startswith("ClientHello") and self.reset is None:
            # A fresh association: a live server answers it, a busy one once it is free.
            observation = prober.await_answer(self.timer)
            if observation.timeout:
                raise ServerBusy(letter)
        else:
            observation = prober.receive(wait=wait)
        if any(
            i.kind == "alert" and (i.level == 2 or i.description == 0) for i in observation.items
        ):
            self.dead = True
        elif observation.has("ServerHello"):
            self.dead = False
        return observation.label

    def query(self, word: tuple[str, ...]) -> list[str]:
        """Cached query; a contradiction with an earlier answer is re-run, majority wins."""
        word = tuple(word)
        cached = self.cache.get(word)
        if cached is not None:
            self.cache_hits += 1
            return list(cached)
        outputs = self._run(word)
        self.queries += 1
        if self._contradicts(word, outputs):
            self.nondeterministic += 1
            runs = [outputs] + [self._run(word) for _ in range(2)]
            outputs = Counter(runs).most_common(1)[0][0]
            # The learner already holds the answers to this word's prefixes: keep them (its
            # observation tree must stay consistent) and take only the new tail.
            known = max((n for n in range(1, len(word)) if word[:n] in self.cache), default=0)
            if known:
                outputs = self.cache[word[:known]] + outputs[known:]
        self._store(word, outputs)
        if self.progress is not None:
            self.progress(self)
        return list(outputs)

    def adaptive_query(self, word: list[str], ads: Any) -> tuple[list[str], list[str]]:
        """L#'s adaptive distinguishing sequences, one cached query per step, so that every
        answer goes through the cache (and the busy-server handling) like any other."""
        word = list(word)
        outputs = self.query(tuple(word)) if word else []
        last: str | None = None  # as AALpy's SUL.adaptive_query: the ADS starts from None
        while True:
            letter = ads.next_input(last)
            if letter is None:
                break
            word.append(letter)
            outputs = self.query(tuple(word))
            last = outputs[-1]
        return word, outputs

    def _run(self, word: tuple[str, ...]) -> tuple[str, ...]:
        """One query; a server that never answers its first ClientHello is given time to
        finish what it is busy with (a longer settle) and asked again."""
        for attempt in range(self.busy_retries + 1):
            try:
                return tuple(super().query(word))
            except ServerBusy:
                self.busy += 1
                self.post()
                if attempt == self.busy_retries:
                    break
                time.sleep(max(1.0, 10 * self.settle))
        return tuple(TIMEOUT for _ in word)

    def _contradicts(self, word: tuple[str, ...], outputs: tuple[str, ...]) -> bool:
        for n in range(1, len(word) + 1):
            known = self.cache.get(word[:n])
            if known is not None and known != outputs[:n]:
                return True
        return False

    def _store(self, word: tuple[str, ...], outputs: tuple[str, ...]) -> None:
        for n in range(1, len(word) + 1):
            self.cache.setdefault(word[:n], outputs[:n])


class SpecGuidedOracle(aalpy.Oracle):  # type: ignore[misc]
    """Equivalence oracle: sequences where hypothesis and spec differ, the spec's transition
    cover, then random walks from every hypothesis state."""

    def __init__(
        self,
        alphabet: Sequence[str],
        sul: DTLSServerSUL,
        spec: Mealy | None,
        *,
        walks_per_state: int = 20,
        walk_length: int = 8,
        seed: int = 6347,
        progress: ProgressPrinter | None = None,
        query_budget: int | None = None,
    ) -> None:
        super().__init__(list(alphabet), sul)
        self.query_budget = query_budget
        self.budget_reached = False
        self.spec = spec
        self.walks_per_state = walks_per_state
        self.walk_length = walk_length
        self.random = random.Random(seed)
        self.progress = progress
        self.rounds = 0

    def _check(self, hypothesis: Any, word: tuple[str, ...]) -> tuple[str, ...] | None:
        if self._over_budget():
            return None  # the budget is spent: the hypothesis stands (say so in the result)
        observed = self.sul.query(word)
        hypothesis.reset_to_initial()
        for index, letter in enumerate(word):
            if hypothesis.step(letter) != observed[index]:
                return word[: index + 1]
        return None

    def _over_budget(self) -> bool:
        if self.query_budget is not None and self.sul.queries >= self.query_budget:
            self.budget_reached = True
        return self.budget_reached

    def find_cex(self, hypothesis: Any) -> tuple[str, ...] | None:
        self.rounds += 1
        machine = from_aalpy(hypothesis, self.alphabet)
        if self.progress is not None:
            self.progress.states = len(machine.states)
            self.progress(self.sul, force=True)
        if self.spec is not None:
            for difference in differences(self.spec, machine, limit=50):
                cex = self._check(hypothesis, difference.inputs)
                if cex is not None:
                    return cex
            # The spec's transition cover: every spec state's access sequence and one more
            # input. It contains the complete (and the abbreviated) handshake, which random
            # walks almost never hit, so a server that goes silent early is not mistaken for
            # a server with no deeper states.
            for spec_prefix in self.spec.access_sequences().values():
                for letter in self.alphabet:
                    cex = self._check(hypothesis, (*spec_prefix, letter))
                    if cex is not None:
                        return cex
        access = machine.access_sequences()
        for state in machine.states:
            prefix = access.get(state)
            if prefix is None:
                continue
            for _ in range(self.walks_per_state):
                length = self.random.randint(1, self.walk_length)
                suffix = tuple(self.random.choice(self.alphabet) for _ in range(length))
                cex = self._check(hypothesis, (*prefix, *suffix))
                if cex is not None:
                    return cex
        return None


@dataclass
class LearningResult:
    """A learned machine and its comparison with the spec-derived one."""

    machine: Mealy
    spec: Mealy
    differences: list[Difference]
    inputs: tuple[str, ...]
    queries: int
    steps: int
    cache_hits: int
    nondeterministic: int
    rounds: int
    seconds: float
    files: dict[str, str] = field(default_factory=dict)
    busy_queries: int = 0
    reset: str = "restart"
    budget_reached: bool = False

    @property
    def equivalent(self) -> bool:
        return not self.differences

    def verdict(self) -> str:
        if self.equivalent:
            return "equivalent"
        return f"differs from the spec ({len(self.differences)} shortest differences shown)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": "equivalent" if self.equivalent else "different",
            "inputs": list(self.inputs),
            "states": len(self.machine.states),
            "spec_states": len(self.spec.states),
            "differences": [d.to_dict() for d in self.differences],
            "queries": self.queries,
            "steps": self.steps,
            "cache_hits": self.cache_hits,
            "nondeterministic_queries": self.nondeterministic,
            "equivalence_rounds": self.rounds,
            "busy_retries": self.busy_queries,
            "reset": self.reset,
            "query_budget_reached": self.budget_reached,
            "seconds": round(self.seconds, 1),
            "files": self.files,
            "machine": self.machine.to_dict(),
        }


def learn(
    transport_factory: TransportFactory,
    credentials: ClientCredentials,
    *,
    inputs: Sequence[str] = INPUTS,
    options: ServerOptions | None = None,
    reset: Callable[[], None] | None = None,
    wait: float = 0.15,
    walks_per_state: int = 20,
    walk_length: int = 8,
    progress: TextIO | None = sys.stderr,
    output_dir: Path | None = None,
    name: str = "server",
    formats: Sequence[str] = ("svg", "png"),
    settle: float = 0.1,
    query_budget: int | None = None,
) -> LearningResult:
    """Learn the server's Mealy machine over ``inputs`` and compare it with the spec.
    ``reset`` restarts the server before each query; without it, each query is a new client
    port after a clean close and ``settle`` s (see :class:`DTLSServerSUL`)."""
    inputs = tuple(inputs)
    started = time.monotonic()
    printer = ProgressPrinter(progress)
    sul = DTLSServerSUL(
        transport_factory,
        credentials,
        reset=reset,
        wait=wait,
        progress=printer,
        needs_session="ClientHelloResume" in inputs,
        settle=settle,
    )
    spec = spec_machine(inputs, options)
    oracle = SpecGuidedOracle(
        inputs,
        sul,
        spec,
        walks_per_state=walks_per_state,
        walk_length=walk_length,
        progress=printer,
        query_budget=query_budget,
    )
    model = _lsharp.run_Lsharp(
        list(inputs),
        sul,
        oracle,
        automaton_type="mealy",
        cache_and_non_det_check=False,
        print_level=0,
    )
    machine = from_aalpy(model, inputs).minimized()
    printer.states = len(machine.states)
    printer(sul, force=True)
    result = LearningResult(
        machine=machine,
        spec=spec,
        differences=differences(spec, machine, limit=8),
        inputs=inputs,
        queries=sul.queries,
        steps=sul.steps,
        cache_hits=sul.cache_hits,
        nondeterministic=sul.nondeterministic,
        rounds=oracle.rounds,
        seconds=time.monotonic() - started,
        busy_queries=sul.busy,
        budget_reached=oracle.budget_reached,
        reset="restart" if reset is not None else f"new client port + close_notify + {settle} s",
    )
    if output_dir is not None:
        result.files = save_machines(result, output_dir, name, formats)
    return result


def save_machines(
    result: LearningResult,
    directory: Path,
    name: str,
    formats: Sequence[str] = ("svg", "png"),
) -> dict[str, str]:
    """Write the learned (and the spec) machine as .dot and, with Graphviz, as ``formats``."""
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for kind, machine in (("learned", result.machine), ("spec", result.spec)):
        title = f"{name}: {kind} machine ({len(machine.states)} states)"
        source = to_dot(machine, title)
        dot_path = directory / f"{name}-{kind}.dot"
        dot_path.write_text(source, encoding="utf-8")
        files[f"{kind}_dot"] = dot_path.name
        for suffix in formats:
            image = dot_path.with_suffix(f".{suffix}")
            if render_dot(source, image):
                files[f"{kind}_{suffix}"] = image.name
    return files


__all__ = [
    "TIMEOUT",
    "DTLSServerSUL",
    "LearningResult",
    "SpecGuidedOracle",
    "learn",
    "save_machines",
]
