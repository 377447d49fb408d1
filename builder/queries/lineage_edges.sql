-- Edges of the lineage graph: snapshot -> pair version it sampled and judged (policy M_i), pair version -> the snapshot trained on it, D1 -> D2, parent snapshot -> child.
select config_json ->> 'policy' as source, version as target, 'built pairs' as relation
from versions
where stage = 'pairs'
union all
select pair_version, snapshot_id, 'trained'
from snapshots
where pair_version is not null
union all
select parent_snapshot_id, snapshot_id, 'parent'
from snapshots
where parent_snapshot_id is not null
union all
select parent.version, child.version, 'phase 1 -> 2'
from versions child, unnest(child.parents) as u(parent_version)
join versions parent on parent.version = u.parent_version
where child.stage = 'pairs' and parent.stage = 'pairs'
order by relation, source, target
