-- Nodes of the lineage graph: every model snapshot and every pair version, with a label (see lineage_edges).
select snapshot_id as node, 'snapshot' as kind, name as label, role as detail, temporary, created_at
from snapshots
union all
select version, 'pairs',
       (config_json ->> 'method') || ' iter ' || (config_json ->> 'iteration') || ' ' || (config_json ->> 'phase'),
       rows || ' pairs', false, cast(created_at as timestamptz)
from versions
where stage = 'pairs'
order by created_at, node
