-- The vanishing-gap diagnostic: mean chosen-minus-rejected score gap per method, iteration and phase, as the pairs' own judge scored them; final marks the phase that trains M_{i+1}.
-- final: d2 for tsr, d1 for tsr-past, sr for sr. (SPEC "What the paper reports": SR's gap shrinks over
-- iterations, TSR's does not.) Rescored by one fixed judge: see rescored_gap.
with pair_versions as (
    select version as pair_version,
           config_json ->> 'method' as method,
           cast(config_json ->> 'iteration' as integer) as iteration,
           config_json ->> 'phase' as phase,
           config_json ->> 'judge' as judge_id,
           created_at
    from versions
    where stage = 'pairs'
)
select v.method, v.iteration, v.phase,
       v.phase = case v.method when 'tsr' then 'd2' when 'tsr-past' then 'd1' else 'sr' end as final,
       count(p.pair_id) as pairs,
       avg(p.gap) as mean_gap,
       v.pair_version, v.judge_id, v.created_at
from pair_versions v
left join pairs p on p.pair_version = v.pair_version
group by all
order by v.method, v.iteration, v.phase, v.created_at, v.pair_version
