-- Pairs per method, iteration and phase, with mean chosen and rejected scores and the gap.
select method, iteration, phase, pair_version,
       count(*) as pairs,
       round(avg(chosen_score), 3) as mean_chosen,
       round(avg(rejected_score), 3) as mean_rejected,
       round(avg(gap), 3) as mean_gap,
       count(*) filter (where chosen_pool = 'future') as chosen_from_future,
       count(*) filter (where rejected_pool = 'past') as rejected_from_m0
from pairs
group by all
order by method, iteration, phase
