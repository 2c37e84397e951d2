"""A pool of Ray actors that score batches with the validator, in parallel and fault-tolerantly.

:class:`ValidatorActor` is a thin Ray shell over the plain :class:`~validator_actors.validator.Validator`
and :func:`~validator_actors.validator.score` (resource options and forwarding only).
:class:`ValidatorPool` cuts a batch into chunks, keeps up to ``inflight_per_actor`` chunks queued
on each actor, and gathers results with ``ray.wait`` as they arrive. A chunk whose actor dies, or
that runs past ``timeout_s``, is rescored on a freshly created replacement actor (the old one is
killed); after ``max_retries`` such retries its samples get an explicit failure :class:`Score`:

    ``Score(index, reward=-1.0, valid=False, codes=("VALIDATOR_TIMEOUT",) or ("VALIDATOR_CRASH",),
    tokens=0, hash=None)``

i.e. exactly the FAIL reward and no token penalty (the program was never counted), never a silent
0 or NaN. Every index of the batch appears exactly once in the output.

>>> ray.init(num_cpus=2)                                       # doctest: +SKIP
>>> pool = ValidatorPool(num_actors=2, chunk_size=128)          # doctest: +SKIP
>>> [s.reward for s in pool.score(["check rule 3"], ["C3?"], ["C3?"])]  # doctest: +SKIP
[0.97]
>>> for scores in pool.iter_scores(intents, programs, refs):  # as chunks arrive  # doctest: +SKIP
...     handle(scores)                                          # Score.index is batch-global
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import ray
from ray.exceptions import RayActorError, RayTaskError

from validator_actors.validator import Score, Validator, score

TokenCounterFn = Callable[[Sequence[str]], list[int]]
# ActorDiedError and ActorUnavailableError are subclasses of RayActorError in Ray 2.60
ACTOR_ERRORS = (RayActorError, RayTaskError)


@dataclass(frozen=True)
class FaultInjection:
    """Test and benchmark hooks only: make an actor slow so a test can kill it or time it out."""

    delay_s: float = 0.0  # sleep this long before scoring a chunk
    marker: str | None = None  # sleep only for chunks holding a program that contains this text


@ray.remote(num_cpus=0.5, max_restarts=0, max_task_retries=0)
class ValidatorActor:
    """Ray shell over ``Validator`` + ``score``. The pool handles restarts, so Ray does not."""

    def __init__(
        self,
        token_counter: TokenCounterFn | None = None,
        max_penalized_tokens: int = 256,
        cache_size: int = 65536,
        fault: FaultInjection | None = None,
    ):
        self.validator = Validator(cache_size=cache_size)
        self.token_counter = token_counter
        self.max_penalized_tokens = max_penalized_tokens
        self.fault = fault or FaultInjection()

    def ready(self) -> bool:
        return True

    def cpu_seconds(self) -> float:
        """CPU time this actor has used (benchmarks: throughput free of other load)."""
        return time.process_time()

    def score(self, intents, programs, references, offset: int = 0) -> list[Score]:
        f = self.fault
        if f.delay_s and (f.marker is None or any(f.marker in str(p) for p in programs)):
            time.sleep(f.delay_s)
        return score(
            intents, programs, references, validator=self.validator,
            token_counter=self.token_counter, max_penalized_tokens=self.max_penalized_tokens,
            offset=offset,
        )


@dataclass
class PoolStats:
    """Counters over the pool's life. ``failed_samples`` got an explicit failure Score."""

    chunks: int = 0  # chunks scored successfully
    samples: int = 0  # samples returned (scored or explicit failure)
    restarts: int = 0  # actors killed and replaced
    retries: int = 0  # chunks resubmitted after a timeout or crash
    timeouts: int = 0  # chunk attempts that ran past timeout_s
    crashes: int = 0  # chunk attempts whose actor died or raised
    failed_samples: int = 0  # samples given VALIDATOR_TIMEOUT / VALIDATOR_CRASH


@dataclass(frozen=True)
class _Chunk:
    start: int  # index of its first sample in the batch
    stop: int
    attempt: int = 0


@dataclass
class _Slot:
    actor: ray.actor.ActorHandle
    ready_ref: ray.ObjectRef | None  # the ping while the actor starts; None once it is up
    started_at: float
    inflight: deque = field(default_factory=deque)  # (chunk, ref), oldest (= running) first
    deadline: float = 0.0  # for the oldest in-flight chunk: timeout_s after it could start
    pinned: deque = field(default_factory=deque)  # retries that must run on this (new) actor


def failure_scores(chunk_start: int, chunk_stop: int, code: str) -> list[Score]:
    """Explicit failures for samples the pool could not score: reward -1, nothing else."""
    return [Score(i, -1.0, False, (code,), 0) for i in range(chunk_start, chunk_stop)]


class PoolError(RuntimeError):
    """The pool cannot do its job at all (e.g. an actor cannot start); not a scoring failure."""


@dataclass(frozen=True)
class PoolConfig:
    """The validator pool's settings, checked at construction."""

    num_actors: int = 2
    """Actors kept alive."""
    chunk_size: int = 128
    """Samples per actor call: the unit of dispatch, of timeout and of retry."""
    timeout_s: float = 30.0
    """A chunk running longer than this, from when it could start, is a timeout."""
    max_retries: int = 1
    """Times a timed-out or crashed chunk is rescored on a fresh actor before it fails explicitly."""
    num_cpus: float = 0.5
    """Logical CPUs each actor reserves (0.5: two actors leave a core for the rest on 2 cores)."""
    inflight_per_actor: int = 2
    """Chunks queued on each actor at once; 2 hides the round trip between chunks."""
    max_penalized_tokens: int = 256
    """Token penalty cap, as in ``validator.score``."""
    startup_timeout_s: float = 120.0
    """An actor that is not up by then raises :class:`PoolError` (usually: no free CPU)."""

    def __post_init__(self):
        positive = ("num_actors", "chunk_size", "timeout_s", "inflight_per_actor", "startup_timeout_s")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"PoolConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.max_retries < 0:
            raise ValueError(f"PoolConfig.max_retries must be >= 0, got {self.max_retries}")
        if self.num_cpus < 0:
            raise ValueError(f"PoolConfig.num_cpus must be >= 0, got {self.num_cpus}")


class ValidatorPool:
    """Score batches across validator actors. Needs ``ray.init()`` first.

    Keyword arguments are the fields of :class:`PoolConfig` (or pass ``config=``), plus
    ``token_counter`` (``list[str] -> list[int]``, picklable, e.g. ``tokens.TokenCounter``),
    ``actor_options`` (extra ``ValidatorActor.options(...)``) and ``fault`` (a test/benchmark
    hook, see :class:`FaultInjection`; None in production).
    """

    def __init__(
        self,
        num_actors: int = 2,
        chunk_size: int = 128,
        timeout_s: float = 30.0,
        max_retries: int = 1,
        token_counter: TokenCounterFn | None = None,
        actor_options: dict | None = None,
        *,
        config: PoolConfig | None = None,
        fault: FaultInjection | None = None,
        **more: float,
    ):
        self.config = config or PoolConfig(num_actors, chunk_size, timeout_s, max_retries, **more)
        if not ray.is_initialized():
            raise PoolError("ValidatorPool needs Ray: call ray.init() (or run inside a Ray job) first")
        cfg = self.config
        self.chunk_size, self.timeout_s, self.max_retries = cfg.chunk_size, cfg.timeout_s, cfg.max_retries
        self.startup_timeout_s, self.inflight_per_actor = cfg.startup_timeout_s, cfg.inflight_per_actor
        self.actor_options = {"num_cpus": cfg.num_cpus, **(actor_options or {})}
        self._actor_args = dict(
            token_counter=token_counter, max_penalized_tokens=cfg.max_penalized_tokens, fault=fault
        )
        self.stats = PoolStats()
        self._slots = [self._new_slot() for _ in range(cfg.num_actors)]
        self._busy = False
        self._executor: ThreadPoolExecutor | None = None

    # -- actors -------------------------------------------------------------------------------

    def _new_slot(self) -> _Slot:
        actor = ValidatorActor.options(**self.actor_options).remote(**self._actor_args)
        return _Slot(actor, actor.ready.remote(), time.monotonic())

    def _restart(self, k: int) -> _Slot:
        """Kill slot ``k``'s actor and put a fresh one in its place."""
        old = self._slots[k]
        try:
            ray.kill(old.actor, no_restart=True)
        except Exception:  # already dead
            pass
        self._slots[k] = self._new_slot()
        self._slots[k].pinned = old.pinned
        self.stats.restarts += 1
        return self._slots[k]

    @property
    def actors(self) -> list:
        """The current actor handles (tests kill them)."""
        return [s.actor for s in self._slots]

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Block until every actor is up (optional: scoring waits by itself)."""
        refs = [s.ready_ref for s in self._slots if s.ready_ref is not None]
        ray.get(refs, timeout=timeout_s or self.startup_timeout_s)
        for s in self._slots:
            s.ready_ref = None

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        for s in self._slots:
            try:
                ray.kill(s.actor, no_restart=True)
            except Exception:
                pass
        self._slots = []

    # -- scoring ------------------------------------------------------------------------------

    def score(
        self,
        intents: Sequence[str],
        programs: Sequence[str],
        references: Sequence[str | None],
    ) -> list[Score]:
        """Score a batch; the result is in batch order, one Score per sample, exactly once."""
        n = len(programs)
        out: list[Score | None] = [None] * n
        for chunk_scores in self.iter_scores(intents, programs, references):
            for s in chunk_scores:
                if out[s.index] is not None:
                    raise AssertionError(f"sample {s.index} scored twice")
                out[s.index] = s
        missing = [i for i, s in enumerate(out) if s is None]
        if missing:
            raise AssertionError(f"samples lost by the pool: {missing[:10]}")
        return out  # type: ignore[return-value]

    def score_async(
        self,
        intents: Sequence[str],
        programs: Sequence[str],
        references: Sequence[str | None],
    ) -> Future[list[Score]]:
        """Start :meth:`score` in the pool's background thread and return its future, so that the
        caller can keep generating; batches submitted this way are scored one after another."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="validator-pool")
        return self._executor.submit(self.score, list(intents), list(programs), list(references))

    def iter_scores(
        self,
        intents: Sequence[str],
        programs: Sequence[str],
        references: Sequence[str | None],
    ) -> Iterator[list[Score]]:
        """Yield each chunk's Scores as it arrives (any order; ``Score.index`` is batch-global).

        Every index in ``range(len(programs))`` is yielded exactly once over the iteration.
        One iteration at a time per pool.
        """
        if not len(intents) == len(programs) == len(references):
            raise ValueError(
                f"intents, programs and references differ in length: "
                f"{len(intents)}, {len(programs)}, {len(references)}"
            )
        if self._busy:
            raise RuntimeError("this ValidatorPool is already scoring a batch")
        if not self._slots:
            raise PoolError("this ValidatorPool has been shut down")
        self._busy = True
        batch = (list(intents), list(programs), list(references))
        n, c = len(programs), self.chunk_size
        queue = deque(_Chunk(i, min(i + c, n)) for i in range(0, n, c))
        try:
            while queue or any(s.inflight or s.pinned for s in self._slots):
                self._dispatch(queue, batch)
                yield from self._poll(queue)
        finally:
            for s in self._slots:  # an abandoned iteration: late results are dropped
                s.inflight, s.pinned = deque(), deque()
            self._busy = False

    def _dispatch(self, queue: deque, batch: tuple) -> None:
        now = time.monotonic()
        for s in self._slots:
            while s.ready_ref is None and len(s.inflight) < self.inflight_per_actor:
                source = s.pinned or queue
                if not source:
                    break
                chunk = source.popleft()
                args = (x[chunk.start : chunk.stop] for x in batch)
                s.inflight.append((chunk, s.actor.score.remote(*args, offset=chunk.start)))
                if len(s.inflight) == 1:
                    s.deadline = now + self.timeout_s

    def _poll(self, queue: deque) -> Iterator[list[Score]]:
        """Wait for the next event (a result, an actor up, a deadline) and handle it."""
        now = time.monotonic()
        waiting = {s.ready_ref: k for k, s in enumerate(self._slots) if s.ready_ref is not None}
        running = {ref: k for k, s in enumerate(self._slots) for _, ref in s.inflight}
        deadlines = [s.deadline for s in self._slots if s.inflight]
        deadlines += [s.started_at + self.startup_timeout_s for s in self._slots if s.ready_ref]
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        done, _ = ray.wait([*waiting, *running], num_returns=1, timeout=timeout)
        for ref in done:
            if ref in waiting:
                self._actor_up(waiting[ref])
            else:
                yield from self._chunk_done(running[ref], ref, queue)
        now = time.monotonic()
        for k, s in enumerate(self._slots):
            if s.ready_ref is not None and now >= s.started_at + self.startup_timeout_s:
                raise PoolError(
                    f"a validator actor did not start within {self.startup_timeout_s:.0f} s: "
                    f"are enough CPUs free for num_cpus={self.actor_options['num_cpus']}?"
                )
            if s.inflight and now >= s.deadline:
                self.stats.timeouts += 1
                yield from self._retry_or_fail(k, queue, "VALIDATOR_TIMEOUT")

    def _actor_up(self, k: int) -> None:
        s = self._slots[k]
        try:
            ray.get(s.ready_ref)
        except ACTOR_ERRORS as exc:
            raise PoolError(f"a validator actor failed to start: {exc}") from exc
        s.ready_ref = None

    def _chunk_done(self, k: int, ref, queue: deque) -> Iterator[list[Score]]:
        s = self._slots[k]
        try:
            scores = ray.get(ref)
        except ACTOR_ERRORS:
            self.stats.crashes += 1
            yield from self._retry_or_fail(k, queue, "VALIDATOR_CRASH")
            return
        position = next(j for j, (_, r) in enumerate(s.inflight) if r == ref)
        chunk, _ = s.inflight[position]
        del s.inflight[position]
        if position == 0:  # the next chunk starts running now
            s.deadline = time.monotonic() + self.timeout_s
        if [x.index for x in scores] != list(range(chunk.start, chunk.stop)):
            raise AssertionError(f"actor returned the wrong indices for chunk {chunk}")
        self.stats.chunks += 1
        self.stats.samples += len(scores)
        yield scores

    def _retry_or_fail(self, k: int, queue: deque, code: str) -> Iterator[list[Score]]:
        """Replace slot ``k``'s actor. Its running chunk is rescored on the new actor, or failed
        explicitly after ``max_retries``; chunks queued behind it go back to the shared queue."""
        (chunk, _), *behind = self._slots[k].inflight
        queue.extendleft(c for c, _ in reversed(behind))
        slot = self._restart(k)
        if chunk.attempt < self.max_retries:
            self.stats.retries += 1
            slot.pinned.append(replace(chunk, attempt=chunk.attempt + 1))
            return
        failed = failure_scores(chunk.start, chunk.stop, code)
        self.stats.failed_samples += len(failed)
        self.stats.samples += len(failed)
        yield failed

    def __enter__(self) -> ValidatorPool:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
