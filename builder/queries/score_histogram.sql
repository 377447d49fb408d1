-- Histogram of chosen and rejected scores per method, iteration and phase, in bins of 0.25 (bin_start is the lower edge; integer scores fall on their own bin).
with pair_versions as (
    select version as pair_version,
           config_json ->> 'method' as method,
           cast(config_json ->> 'iteration' as integer) as iteration,
           config_json ->> 'phase' as phase,
           created_at
    from versions
    where stage = 'pairs'
),
sides as (
    select pair_version, 'chosen' as side, chosen_score as score from pairs
    union all
    select pair_version, 'rejected' as side, rejected_score as score from pairs
)
select v.method, v.iteration, v.phase, s.side, floor(s.score * 4) / 4 as bin_start, count(*) as pairs,
       v.pair_version, v.created_at
from sides s
join pair_versions v using (pair_version)
group by all
order by v.method, v.iteration, v.phase, v.created_at, v.pair_version, s.side, bin_start
