"""Model loading, in one place: what a stage needs to load its model here or in a worker on another machine.

A `ModelSpec` is a picklable recipe (backend, model folder, batch size), so an executor can send it to a Ray
actor that loads its own copy; `load()` is the one function that turns it into a model. The store is not part of
the recipe: a worker needs only the folder, which on a cluster sits on a filesystem every node mounts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from builder.config import Profile
    from builder.snapshot import Snapshot
    from builder.store import Store

KINDS = ("generator", "reward")


@dataclass(frozen=True)
class ModelSpec:
    kind: str  # "generator": a Generator (generate, judge, embed); "reward": a RewardScorer
    backend: str
    folder: str
    batch_size: int = 8
    # torch's CPU threads in the process that loads it (None: torch's default). CPU kernels sum in another order
    # with another thread count, and a sampled token on a near-tie can flip: same threads, same rows.
    threads: int | None = None
    options: tuple[tuple[str, Any], ...] = ()  # backend settings (the openai backend's server), as pairs

    def load(self) -> Any:
        from builder.progress import quiet_libraries

        quiet_libraries()
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        if self.kind == "reward":
            from builder.backends.reward import RewardScorer

            return RewardScorer(self.folder)
        from builder.backends.base import get_generator

        return get_generator(self.backend, self.folder, batch_size=self.batch_size, **dict(self.options))


def generator_spec(store: Store, snapshot: Snapshot, profile: Profile, batch_size: int | None = None) -> ModelSpec:
    """How to load `snapshot` for generation and judging under the profile's backend."""
    cfg = profile.generate
    size = batch_size or cfg.batch_size
    if snapshot.served:  # behind its own server, whatever the profile's backend (tsr models add --served)
        from builder.backends.endpoints import endpoint_for

        endpoint = endpoint_for(store.root, snapshot.snapshot_id, snapshot.name)
        return ModelSpec("generator", "openai", "", size, options=(
            ("base_url", endpoint.base_url), ("served_model", snapshot.served_model),
            ("api_key_env", endpoint.api_key_env), ("max_in_flight", cfg.max_in_flight)))
    options = (("base_url", cfg.base_url), ("served_model", cfg.served_model), ("api_key_env", cfg.api_key_env),
               ("max_in_flight", cfg.max_in_flight), ("served_api", cfg.served_api),
               ("serve_command", cfg.serve_command), ("log_dir", str(store.root / "_logs")),
               ) if cfg.backend == "openai" else ()
    return ModelSpec("generator", cfg.backend, str(snapshot.folder(store)), size, options=options)


def reward_spec(store: Store, snapshot: Snapshot) -> ModelSpec:
    """A reward-model judge (a snapshot registered with role "reward")."""
    return ModelSpec("reward", "hf", str(snapshot.folder(store)))


def spec_for(store: Store, snapshot: Snapshot, profile: Profile) -> ModelSpec:
    """How to load any snapshot a stage names: a reward model as one, every other as a generator."""
    return reward_spec(store, snapshot) if snapshot.role == "reward" else generator_spec(store, snapshot, profile)


def stage_models(store: Store, profile: Profile) -> tuple[Any, Callable[[Snapshot], ModelSpec]]:
    """(the profile's executor, snapshot -> ModelSpec): what a command hands the model stages."""
    from builder.stages.ray_executor import executor_for

    return executor_for(profile.executor), lambda snapshot: spec_for(store, snapshot, profile)


def default_generator_factory(store: Store, profile: Profile) -> Callable[[Snapshot], Any]:
    """snapshot -> a loaded generator under the profile's backend."""
    return lambda snapshot: generator_spec(store, snapshot, profile).load()
