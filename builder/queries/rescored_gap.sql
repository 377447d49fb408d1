-- The score gap of every pair version rescored by each judge that scored both its chosen and rejected responses (e.g. one fixed judge for SR and TSR alike), per judge settings.
-- A judge's settings: snapshot, template hash, mode, judge samples, temperature, max new tokens. Several judgments
-- of one generation under the same settings (different seeds) are averaged. Unscored (null) judgments leave the
-- pair out of the mean; rescored_pairs counts the pairs that took part. The gap may be negative under another judge.
with pair_versions as (
    select version as pair_version,
           config_json ->> 'method' as method,
           cast(config_json ->> 'iteration' as integer) as iteration,
           config_json ->> 'phase' as phase,
           created_at
    from versions
    where stage = 'pairs'
),
scores as (
    select generation_id, judge_id, template_hash, mode, judge_samples, temperature, max_new_tokens,
           avg(score) as score
    from judgments
    group by all
)
select v.method, v.iteration, v.phase,
       c.judge_id as rescoring_judge_id, c.template_hash, c.mode, c.judge_samples, c.temperature, c.max_new_tokens,
       count(*) filter (where c.score is not null and r.score is not null) as rescored_pairs,
       avg(c.score - r.score) as mean_rescored_gap,
       avg(c.score) filter (where r.score is not null) as mean_rescored_chosen,
       avg(r.score) filter (where c.score is not null) as mean_rescored_rejected,
       v.pair_version, v.created_at
from pairs p
join pair_versions v on v.pair_version = p.pair_version
join scores c on c.generation_id = p.chosen_generation_id
join scores r on r.generation_id = p.rejected_generation_id
    and r.judge_id = c.judge_id and r.template_hash = c.template_hash and r.mode = c.mode
    and r.judge_samples = c.judge_samples and r.temperature = c.temperature and r.max_new_tokens = c.max_new_tokens
group by all
order by v.method, v.iteration, v.phase, v.created_at, v.pair_version, rescoring_judge_id
