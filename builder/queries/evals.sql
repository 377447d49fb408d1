-- Evaluation results, one row per eval version: win/tie/loss rates with bootstrap 95% intervals (winrate) and strict/loose IFEval accuracies (ifeval), with mean response lengths
select
    e.eval_version,
    e.kind,
    any_value(e.snapshot_id) as snapshot_id,
    any_value(e.other_snapshot_id) as other_snapshot_id,
    any_value(e.judge_id) as judge_id,
    any_value(e.judge_mode) as judge_mode,
    count(*) as prompts,
    avg(case e.outcome when 'win' then 1.0 when 'tie' then 0.0 when 'loss' then 0.0 end) as win_rate,
    avg(case e.outcome when 'tie' then 1.0 when 'win' then 0.0 when 'loss' then 0.0 end) as tie_rate,
    avg(case e.outcome when 'loss' then 1.0 when 'win' then 0.0 when 'tie' then 0.0 end) as loss_rate,
    avg(case e.outcome when 'win' then 1.0 when 'tie' then 0.5 when 'loss' then 0.0 end) as score,
    try_cast(json_extract(any_value(v.stats_json), '$.score_ci[0]') as double) as score_ci_low,
    try_cast(json_extract(any_value(v.stats_json), '$.score_ci[1]') as double) as score_ci_high,
    try_cast(json_extract(any_value(v.stats_json), '$.win_ci[0]') as double) as win_ci_low,
    try_cast(json_extract(any_value(v.stats_json), '$.win_ci[1]') as double) as win_ci_high,
    avg(e.completion_tokens) as mean_tokens,
    avg(e.other_completion_tokens) as mean_other_tokens,
    avg(e.prompt_strict::double) as prompt_strict,
    avg(e.prompt_loose::double) as prompt_loose,
    sum(len(list_filter(e.follow_strict, lambda x: x))) / sum(len(e.instruction_ids)) as instruction_strict,
    sum(len(list_filter(e.follow_loose, lambda x: x))) / sum(len(e.instruction_ids)) as instruction_loose,
    any_value(v.created_at) as created_at
from evals e
join versions v on v.version = e.eval_version
group by e.eval_version, e.kind
order by created_at
