"""Evaluation of snapshots: pairwise win rates against another snapshot (`winrate`) and verifiable instruction
following on IFEval-format prompts (`ifeval`). Results go to the `evals` table with their lineage."""
