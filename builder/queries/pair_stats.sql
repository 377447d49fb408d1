-- Pair statistics per method, iteration and phase (one row per pair version): prompts, pairs kept, ties dropped, unparsable judgments, chosen/rejected score and gap (mean, median), where chosen and rejected came from, response lengths in tokens.
-- Prompts, ties and unparsable judgments come from the pair manifests' stats (versions.stats_json); the rest from
-- the pairs and generations tables. Pools: chosen from M_i = 'current', from M_f = 'future'; rejected from
-- M0 = 'past' (M0's sample indices K..2K-1), from M_i = 'current'. A version that kept no pair still has its row.
with pair_versions as (
    select version as pair_version,
           config_json ->> 'method' as method,
           cast(config_json ->> 'iteration' as integer) as iteration,
           config_json ->> 'phase' as phase,
           config_json ->> 'judge' as judge_id,
           config_json ->> 'policy' as policy_id,
           cast(stats_json ->> 'prompts' as bigint) as prompts,
           cast(stats_json ->> 'samples' as bigint) as judged_samples,
           coalesce(cast(stats_json ->> 'tie' as bigint), 0) as ties_dropped,
           coalesce(cast(stats_json ->> 'no_scored_current' as bigint), 0) as no_scored_current,
           cast(stats_json ->> 'unparsable' as bigint) as unparsable,
           cast(stats_json ->> 'parse_errors' as bigint) as parse_errors,
           created_at
    from versions
    where stage = 'pairs'
),
kept as (
    select p.pair_version,
           count(*) as pairs_kept,
           avg(p.chosen_score) as chosen_mean,
           median(p.chosen_score) as chosen_median,
           avg(p.rejected_score) as rejected_mean,
           median(p.rejected_score) as rejected_median,
           avg(p.gap) as gap_mean,
           median(p.gap) as gap_median,
           count(*) filter (where p.chosen_pool = 'current') as chosen_from_m_i,
           count(*) filter (where p.chosen_pool = 'future') as chosen_from_m_f,
           count(*) filter (where p.rejected_pool = 'past') as rejected_from_m0,
           count(*) filter (where p.rejected_pool = 'current') as rejected_from_m_i,
           avg(c.completion_tokens) as chosen_tokens_mean,
           avg(r.completion_tokens) as rejected_tokens_mean
    from pairs p
    left join generations c on c.generation_id = p.chosen_generation_id
    left join generations r on r.generation_id = p.rejected_generation_id
    group by p.pair_version
)
select v.method, v.iteration, v.phase, v.prompts,
       coalesce(k.pairs_kept, 0) as pairs_kept, v.ties_dropped, v.no_scored_current,
       v.unparsable, v.parse_errors, v.judged_samples,
       k.chosen_mean, k.chosen_median, k.rejected_mean, k.rejected_median, k.gap_mean, k.gap_median,
       coalesce(k.chosen_from_m_i, 0) as chosen_from_m_i, coalesce(k.chosen_from_m_f, 0) as chosen_from_m_f,
       coalesce(k.rejected_from_m0, 0) as rejected_from_m0, coalesce(k.rejected_from_m_i, 0) as rejected_from_m_i,
       k.chosen_tokens_mean, k.rejected_tokens_mean,
       v.pair_version, v.judge_id, v.policy_id, v.created_at
from pair_versions v
left join kept k using (pair_version)
order by v.method, v.iteration, v.phase, v.created_at, v.pair_version
