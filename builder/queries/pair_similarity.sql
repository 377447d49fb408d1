-- Chosen/rejected similarity per pair version: mean cosine of the two responses' mean last-layer hidden states, per embedding snapshot and text kind (`tsr stats --snapshot S` computes and caches them).
-- text_kind: response (the response text alone) or chat (prompt + response through the chat template). A pair
-- with an empty response (a zero vector, whose cosine is undefined) is left out; embedded_pairs counts the rest.
with pair_versions as (
    select version as pair_version,
           config_json ->> 'method' as method,
           cast(config_json ->> 'iteration' as integer) as iteration,
           config_json ->> 'phase' as phase,
           created_at
    from versions
    where stage = 'pairs'
),
cosines as (
    select p.pair_version, c.snapshot_id as embedding_snapshot_id, c.text_kind,
           list_cosine_similarity(c.mean_hidden, r.mean_hidden) as cosine
    from pairs p
    join embeddings c on c.generation_id = p.chosen_generation_id
    join embeddings r on r.generation_id = p.rejected_generation_id
        and r.snapshot_id = c.snapshot_id and r.text_kind = c.text_kind
)
select v.method, v.iteration, v.phase, s.embedding_snapshot_id, s.text_kind,
       count(*) filter (where not isnan(s.cosine)) as embedded_pairs,
       avg(s.cosine) filter (where not isnan(s.cosine)) as mean_similarity,
       median(s.cosine) filter (where not isnan(s.cosine)) as median_similarity,
       v.pair_version, v.created_at
from cosines s
join pair_versions v using (pair_version)
group by all
order by v.method, v.iteration, v.phase, v.created_at, v.pair_version, s.embedding_snapshot_id, s.text_kind
