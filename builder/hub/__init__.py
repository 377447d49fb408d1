"""Share a store on the Hugging Face Hub: push versions to a dataset repo with a card, pull them back.

One dataset repo holds any number of pushed versions:

    README.md                                       dataset card; its YAML `configs` name every table, every pair
                                                    version, `stats` and `versions`, so `load_dataset(repo, config)`
                                                    works without temporal-sr
    plots/gap.png, plots/scores.png                 the card's plots, drawn from the repo's pair versions only
    tsr-hub.json                                    the index: every pushed version, its manifest's sha256, its files
    manifests/<version>.json                        the store's manifests, byte for byte
    data/<table>/<partition folders>/part-<v>.parquet   the raw tables as the store has them (snapshots, runs too)
    data/<pair config>/train-<v>.parquet            a pair version for DPO: prompt / chosen / rejected as chat
                                                    messages (TRL's conversational format) plus lineage columns
    data/stats/stats.parquet                        one row per table and per pair version
    data/versions/versions.parquet                  every pushed manifest: the lineage (parents, config, files)

A push is one commit (`create_commit`, guarded by `parent_commit`), so a failed push leaves the repo as it was;
each pushed pair version then gets a tag (`pairs-tsr-iter2-<version prefix>`) to load it by name later. Versions
the repo already has (same manifest checksum) are not sent again, and pushing nothing new makes no commit. A push
writes nothing into the store. A pull downloads and checks everything before it writes a byte, installs versions
through the store's own write path, and never overwrites a local version that differs.

The token comes from huggingface_hub's usual sources (HF_TOKEN, the saved login) and is never written anywhere;
error messages are scrubbed of it. Transient failures (connection errors, 408, 429, 5xx) are retried with
exponential backoff.

One module per job:

    select.py     which versions a push sends (the chosen ones and their lineage)
    push.py       the commit: store files, derived files, card and index; then tags
    pull.py       download, check, and install into the local store
    card.py       the dataset card (huggingface_hub's DatasetCard) and its plots
    tables.py     the derived Parquet files: DPO rows, stats, versions
    index.py      tsr-hub.json and where store files go in the repo
    transport.py  the client, retries, one-line scrubbed errors
"""

from __future__ import annotations

from builder.hub.card import dataset_card
from builder.hub.pull import PullResult, pull
from builder.hub.push import PushResult, push
from builder.hub.select import select_versions
from builder.hub.transport import scrub

# Retries: attempts in all, the first wait and its cap (doubling in between). transport.Retry reads them from here
# on every call, so setting them on the package takes effect (the tests shorten the waits).
RETRY_ATTEMPTS = 4
BACKOFF_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 8.0

__all__ = ["BACKOFF_MAX_SECONDS", "BACKOFF_SECONDS", "RETRY_ATTEMPTS", "PullResult", "PushResult", "dataset_card",
           "pull", "push", "scrub", "select_versions"]
