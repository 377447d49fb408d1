-- How each judge scored: replies with a parsable `Score: N`, forced-mode fallbacks and unscored judgments.
select judge_id, mode,
       count(*) as judgments,
       count(*) filter (where scored_by = 'generate') as parsed_score,
       count(*) filter (where scored_by = 'forced') as forced_score,
       count(*) filter (where score is null) as unscored,
       round(avg(score), 3) as mean_score
from judgments
group by all
order by judge_id, mode
