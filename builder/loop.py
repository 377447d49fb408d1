"""The iteration loop: everything iteration N needs, reusing whatever exists.

Iteration N (1-based) starts from M_{N-1} (M_0 is the starting model), uses prompt chunk N, builds its pairs and
would train M_N. Building iteration N's pairs therefore trains M_1 ... M_{N-1} on the way. Every step is a
content-keyed stage, so a rerun (or an SR run beside a TSR run in the same data root) finds and reuses what
exists: M0's samples and judgments, temporary future models, pairs, trained snapshots.
"""

from __future__ import annotations

import gc
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl

from builder.backends.base import Generator
from builder.backends.loading import ModelSpec, default_generator_factory, generator_spec, reward_spec
from builder.config import Profile
from builder.errors import TsrError
from builder.snapshot import Snapshot
from builder.stages import pair_rules
from builder.stages.base import Executor
from builder.stages.generate import GenerationSet, SampleRequest, generate_together
from builder.stages.judge import JudgmentSet, judge_together
from builder.stages.pairs import Pool, materialize, scored_frame
from builder.stages.prompts import prompt_chunk
from builder.stages.ray_executor import executor_for
from builder.store import Store

METHODS = ("tsr", "sr", "tsr-past")


@dataclass
class IterationResult:
    iteration: int
    method: str
    policy: Snapshot  # M_{N-1}, the model that sampled and judged
    final_pairs: str  # the pair version that trains M_N
    pair_versions: dict[str, str] = field(default_factory=dict)  # phase -> version
    future: Snapshot | None = None


class Loop:
    """Builds the pairs of any iteration for one method; one loaded model at a time."""

    def __init__(
        self,
        store: Store,
        profile: Profile,
        *,
        m0: Snapshot,
        prompt_set: str,
        method: str = "tsr",
        judge: Snapshot | None = None,
        generator_factory: Callable[[Snapshot], Generator] | None = None,
        executor: Executor | None = None,
    ):
        if method not in METHODS:
            raise TsrError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
        self.store = store
        self.profile = profile
        self.m0 = m0
        self.prompt_set = prompt_set
        self.method = method
        self.fixed_judge = judge
        self.make_generator = generator_factory or default_generator_factory(store, profile)
        # A model other executors can load too; a custom factory (a scripted model in tests) has none.
        self._specs = generator_factory is None
        self.executor = executor or executor_for(profile.executor)
        self.seconds: dict[str, float] = defaultdict(float)
        self.work: dict[str, int] = {"generated": 0, "judged": 0, "trained": 0}  # what was computed, not reused
        self.results: dict[int, IterationResult] = {}
        self.horizon = 0  # the last iteration this run builds (the one first asked for)
        self._prompts: dict[int, pl.DataFrame] = {}
        self._policies: dict[int, Snapshot] = {0: m0}
        self._loaded: tuple[str, Generator] | None = None

    # ---- models -----------------------------------------------------------------------------------------------

    def generator_for(self, snapshot: Snapshot) -> Callable[[], Generator]:
        """A loader for stages: only called when a stage has work, and reuses the model already in memory."""

        def load() -> Generator:
            if self._loaded is None or self._loaded[0] != snapshot.snapshot_id:
                self.release()
                started = time.monotonic()
                self._loaded = (snapshot.snapshot_id, self.make_generator(snapshot))
                self.seconds["load model"] += time.monotonic() - started
            return self._loaded[1]

        return load

    def release(self) -> None:
        """Drop the model in memory; a served model's engine (generate.serve_command) is stopped now."""
        if self._loaded is not None:
            close = getattr(self._loaded[1], "close", None)
            self._loaded = None
            if close is not None:
                close()
        gc.collect()

    def spec_for(self, snapshot: Snapshot) -> Callable[[], ModelSpec] | None:
        """The model as other executors load it; made only when a stage has work (it may resolve a download)."""
        if snapshot.role == "reward":
            return lambda: reward_spec(self.store, snapshot)
        return (lambda: generator_spec(self.store, snapshot, self.profile)) if self._specs else None

    def policy(self, n: int) -> Snapshot:
        """M_n: M0 for n = 0, else M_{n-1} trained on iteration n's final pairs."""
        if n not in self._policies:
            from train.dpo import train_dpo

            result = self.iteration(n)
            start = self.policy(n - 1)
            self.release()  # free the generator's memory (or the engine tsr started) for training
            started = time.monotonic()
            trained = train_dpo(self.store, result.final_pairs, start, self.profile.train,
                                role="iteration", name=f"M{n}-{self.method}")
            self.seconds["train"] += time.monotonic() - started
            self.work["trained"] += int(trained.trained)
            self._policies[n] = trained.snapshot
        return self._policies[n]

    # ---- one iteration ----------------------------------------------------------------------------------------

    def prompts(self, n: int) -> pl.DataFrame:
        """Iteration n's prompt chunk, read once (phase 1 asks for it with every pool it samples)."""
        if n not in self._prompts:
            self._prompts[n] = prompt_chunk(self.store, self.prompt_set, n, self.profile.loop.prompts_per_iteration)
        return self._prompts[n]

    def _generate(self, snapshot: Snapshot, *requests: tuple[int, range, str]) -> list[GenerationSet]:
        """Samples of `snapshot` for each (iteration, sample indices, label), drawn in shared batches."""
        started = time.monotonic()
        results = generate_together(
            self.store, snapshot_id=snapshot.snapshot_id, cfg=self.profile.generate,
            requests=[SampleRequest(self.prompts(n), self.prompt_set, list(indices), label)
                      for n, indices, label in requests],
            load_generator=self.generator_for(snapshot), spec=self.spec_for(snapshot), executor=self.executor)
        self.seconds["generate"] += time.monotonic() - started
        self.work["generated"] += sum(result.generated for result in results)
        return results

    def _judge(self, judge_snapshot: Snapshot, *pools: tuple[GenerationSet, str]) -> list[JudgmentSet]:
        """Judgments by `judge_snapshot` of each (generations, label), computed in shared batches."""
        started = time.monotonic()
        reward = judge_snapshot.role == "reward"
        spec = self.spec_for(judge_snapshot)
        loader = (lambda: spec().load()) if reward else self.generator_for(judge_snapshot)
        results = judge_together(self.store, judge_id=judge_snapshot.snapshot_id,
                                 generation_sets=[generations.generation_ids for generations, _ in pools],
                                 labels=[label for _, label in pools], cfg=self.profile.judge, load_generator=loader,
                                 spec=spec, executor=self.executor, reward=reward)
        self.seconds["judge"] += time.monotonic() - started
        self.work["judged"] += sum(result.judged for result in results)
        return results

    def _pairs(self, build: pair_rules.PairBuild, scored: pl.DataFrame, n: int, phase: str, policy: Snapshot,
               judge_id: str, parents: list[str]) -> str:
        started = time.monotonic()
        version = materialize(self.store, build=build, method=self.method, iteration=n, phase=phase,
                              judge_id=judge_id, policy_id=policy.snapshot_id, scored=scored, parents=parents)
        self.seconds["pairs"] += time.monotonic() - started
        return version

    def iteration(self, n: int) -> IterationResult:
        if n in self.results:
            return self.results[n]
        if n < 1:
            raise TsrError(f"iterations count from 1, got {n}")
        self.horizon = max(self.horizon, n)
        policy = self.policy(n - 1)
        judge_snapshot = self.fixed_judge or policy  # self-judging unless a fixed judge is given
        gen_cfg = self.profile.generate
        k = gen_cfg.k
        tag = f"iter {n}"

        if self.method == "sr":
            k = self.profile.loop.sr_k or k
            (current,) = self._generate(policy, (n, range(k), f"{tag} M_i"))
            (judged,) = self._judge(judge_snapshot, (current, f"{tag} judge M_i"))
            scored = scored_frame(self.store, [Pool("current", judged.judgment_ids)])
            build = pair_rules.build_sr(scored)
            version = self._pairs(build, scored, n, "sr", policy, judge_snapshot.snapshot_id,
                                  [current.version, judged.version])
            result = IterationResult(n, self.method, policy, version, {"sr": version})
            self.results[n] = result
            return result

        # Phase 1: anchored rejection. The past pool is always M0's sample indices K..2K-1 (SPEC.md). While M0 is
        # loaded it also draws the past pools of the iterations still to come in this run (they depend on nothing
        # else), and at iteration 1, where M_i is M0, the current pool too: one pass over M0 instead of several.
        past_pools = [(m, range(k, 2 * k), f"iter {m} M0") for m in range(n, self.horizon + 1)]
        if policy.snapshot_id == self.m0.snapshot_id:
            current, past, *_ = self._generate(policy, (n, range(k), f"{tag} M_i"), *past_pools)
        else:
            (current,) = self._generate(policy, (n, range(k), f"{tag} M_i"))
            past, *_ = self._generate(self.m0, *past_pools)
        judged_current, judged_past = self._judge(judge_snapshot, (current, f"{tag} judge M_i"),
                                                  (past, f"{tag} judge M0"))
        pools = [Pool("current", judged_current.judgment_ids), Pool("past", judged_past.judgment_ids)]
        scored1 = scored_frame(self.store, pools)
        d1 = pair_rules.build_d1(scored1)
        parents1 = [current.version, past.version, judged_current.version, judged_past.version]
        d1_version = self._pairs(d1, scored1, n, "d1", policy, judge_snapshot.snapshot_id, parents1)
        result = IterationResult(n, self.method, policy, d1_version, {"d1": d1_version})
        if self.method == "tsr-past":
            self.results[n] = result
            return result

        # Phase 2: future-guided chosen. M_f = DPO(M_i on D1) only generates; M_i (not M_f) judges.
        from train.dpo import train_dpo

        self.release()
        started = time.monotonic()
        trained = train_dpo(self.store, d1_version, policy, self.profile.train, role="future",
                            name=f"Mf{n}-{self.method}", temporary=True)
        future = trained.snapshot
        self.seconds["train"] += time.monotonic() - started
        self.work["trained"] += int(trained.trained)
        (generated_future,) = self._generate(future, (n, range(k), f"{tag} M_f"))
        (judged_future,) = self._judge(judge_snapshot, (generated_future, f"{tag} judge M_f"))
        scored2 = scored_frame(self.store, [*pools, Pool("future", judged_future.judgment_ids)])
        d2 = pair_rules.build_d2(scored2, d1)
        d2_version = self._pairs(d2, scored2, n, "d2", policy, judge_snapshot.snapshot_id,
                                 [*parents1, d1_version, generated_future.version, judged_future.version])
        result = IterationResult(n, self.method, policy, d2_version, {"d1": d1_version, "d2": d2_version},
                                 future=future)
        self.results[n] = result
        return result
