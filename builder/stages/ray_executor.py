"""The Ray executor: a stage's missing batches mapped over an actor pool, one model per actor.

The runner plans the batches (the same ones the local executor computes, so every row has the same batch
neighbours and the same text); here they become a Ray Dataset of one row per batch, mapped with `map_batches`
over an actor pool whose actors each load the stage's model once from its `ModelSpec`, with the torch thread
count a local run here would use unless `executor.threads_per_actor` says otherwise (on CPUs the sums, and so a
rare near-tie token, depend on it). Finished batches stream
back to the driver as they complete (`iter_rows`), and the runner stages each one at once: a killed driver loses
only batches in flight. Ray restarts a dead actor and retries its batch (up to `executor.max_restarts`).

`ray.init()` joins the cluster named by RAY_ADDRESS, or starts a local one. The actors get the driver's TSR_*
environment (crash points for the tests, TSR_HOME) through the job's runtime environment.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from collections.abc import Iterable
from typing import Any

from builder.config import ExecutorConfig
from builder.errors import TsrError
from builder.faults import crash_point
from builder.stages.base import Executor, ModelSource, Stage

_INSTALL = "pip install 'temporal-sr[ray]'"


def _actor_class(stage: Stage, spec: Any, params: Any) -> type:
    """A Ray actor class that loads the model once, then turns batches of work items into rows.

    The stage, spec and parameters are bound in the class itself (cloudpickle sends it by value) rather than
    passed as constructor arguments: Ray keeps those in the object store, where a restarted actor may not find them.
    """

    class StageActor:
        def __init__(self) -> None:
            self.model = spec.load()

        def __call__(self, block: dict) -> dict:
            import numpy as np

            out = []
            for payload in block["items"]:
                crash_point("ray.actor-batch")
                out.append(json.dumps(stage.compute(self.model, json.loads(payload), params)))
            return {"rows": np.array(out, dtype=object)}

    return StageActor


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, cfg: ExecutorConfig) -> None:
        self.cfg = cfg

    def map(self, stage: Stage, batches: list[list[dict]], params: Any, model: ModelSource) -> Iterable[list[dict]]:
        spec = model.spec()
        if spec is None:
            raise TsrError(f"{stage.name}: this model cannot be loaded by Ray workers (it has no ModelSpec); "
                           "use --executor local")
        ray = _init()
        from ray.data import ActorPoolStrategy

        spec = dataclasses.replace(spec, threads=self.cfg.threads_per_actor or _local_threads())

        # Items travel as JSON text: one row per batch, so Ray never re-batches them and arrow infers nothing.
        dataset = ray.data.from_items([{"items": json.dumps(batch)} for batch in batches],
                                      override_num_blocks=len(batches))
        with warnings.catch_warnings():
            # max_restarts has no named parameter yet (Ray 2.60 deprecates the **ray_remote_args it goes through);
            # without it a model that kills its actor on load would be restarted for ever.
            warnings.simplefilter("ignore", DeprecationWarning)
            mapped = dataset.map_batches(
                _actor_class(stage, spec, params), batch_size=1,
                compute=ActorPoolStrategy(size=min(self.cfg.actors, len(batches))),
                num_cpus=self.cfg.cpus_per_actor, num_gpus=self.cfg.gpus_per_actor or None,
                max_restarts=self.cfg.max_restarts,
            )
        for row in mapped.iter_rows():
            yield json.loads(row["rows"])


def _local_threads() -> int:
    """The CPU threads torch uses in this process, which is what a local run here computes with."""
    import torch

    return torch.get_num_threads()


def _init():
    try:
        import ray
    except ImportError:
        raise TsrError(f"--executor ray needs Ray: {_INSTALL}") from None
    if not ray.is_initialized():
        import ray.data  # configures Ray Data's loggers, which are quietened below

        for name in ("ray", "ray.data"):  # per-dataset INFO lines and advice would bury the stage's bar
            logging.getLogger(name).setLevel(logging.ERROR)
        env = {key: value for key, value in os.environ.items() if key.startswith("TSR_")}
        # RAY_ADDRESS, when set, names the cluster to join; otherwise this starts a local one.
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 runtime_env={"env_vars": env} if env else None)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the runner draws one bar per stage
        context.print_on_execution_start = False
    return ray


def executor_for(cfg: ExecutorConfig) -> Executor:
    """The executor a profile's `executor` section names."""
    from builder.stages.base import LOCAL

    return RayExecutor(cfg) if cfg.kind == "ray" else LOCAL
