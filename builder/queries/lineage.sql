-- Every trained snapshot with its parent, the pair version it was trained on and the run's final metrics.
select s.name, s.snapshot_id, s.role, s.temporary, s.parent_snapshot_id, s.pair_version,
       r.seconds, r.metrics_json
from snapshots s
left join runs r on r.output_snapshot_id = s.snapshot_id and r.run_id = s.run_id
order by s.created_at
