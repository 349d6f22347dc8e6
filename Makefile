# vtg_pipeline: `make demo` runs the main job offline; `make test` runs the tests.
# Both create .venv on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch/torchvision pinned to the builds available on the project's machines.
TORCH  ?= torch==2.14.1 torchvision==0.29.1

# extract defaults (override on the command line: make extract VIDEOS=dir OUT=dir MODEL=vtg-tiny)
VIDEOS     ?=
OUT        ?=
FPS        ?= 0.5
MODEL      ?= ViT-B-32-quickgelu
PRETRAINED ?= $(if $(filter vtg-tiny,$(MODEL)),random:0,openai)
LAYERS     ?= 4
STORE      ?= features
DECODER    ?= auto

DEMO := demo
# Training budget of the demo (the learning check, `make learn`, trains on 500 videos).
DEMO_TRAIN_ARGS ?= optim.epochs=12 "optim.decay_epochs=[10]"

.PHONY: setup lint test demo extract learn clean-demo

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# ruff, configured in pyproject.toml: the lint rules, and the formatter's check (`ruff format .` fixes it).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup
	$(BIN)/python -m pytest -q

extract:
	@test -n "$(VIDEOS)" -a -n "$(OUT)" || { echo "usage: make extract VIDEOS=dir OUT=dir [FPS= MODEL= PRETRAINED= LAYERS= STORE=features|frames|both DECODER=]"; exit 2; }
	@$(MAKE) --no-print-directory setup
	$(BIN)/python extract $(VIDEOS) --out $(OUT) --fps $(FPS) --model $(MODEL) --pretrained $(PRETRAINED) \
		--layers $(LAYERS) --store $(STORE) --decoder $(DECODER)

# The main job on the embedded default, offline: synthetic videos -> features (seeded vtg-tiny) -> training ->
# grounding the validation videos -> metrics -> HTML report -> a search index of all the videos, and the line that
# serves it. A second run reuses what is done (the index is rebuilt from the stored features: the checkpoint may be new).
# MODEL=ViT-B-32-quickgelu PRETRAINED=openai runs the same on real weights (needs them in the open_clip cache).
DEMO_MODEL      ?= $(if $(filter command line,$(origin MODEL)),$(MODEL),vtg-tiny)
DEMO_PRETRAINED ?= $(if $(filter command line,$(origin PRETRAINED)),$(PRETRAINED),$(if $(filter vtg-tiny,$(DEMO_MODEL)),random:0,openai))

demo: setup
	@test -f $(DEMO)/data/val.jsonl || $(BIN)/vtg synth --out $(DEMO)/data --videos 40 --seed 0
	$(BIN)/vtg extract $(DEMO)/data/videos --out $(DEMO)/data/features --model $(DEMO_MODEL) --pretrained $(DEMO_PRETRAINED) --store both
	$(BIN)/vtg train --config configs/synthetic.yaml --resume data.root=$(DEMO)/data output_dir=$(DEMO)/run \
		backbone.name=$(DEMO_MODEL) backbone.pretrained=$(DEMO_PRETRAINED) $(DEMO_TRAIN_ARGS)
	$(BIN)/vtg ground --checkpoint $(DEMO)/run/best --queries $(DEMO)/data/val_queries.jsonl --features $(DEMO)/data/features \
		--out $(DEMO)/predictions.jsonl --report $(DEMO)/report --gt $(DEMO)/data/val.jsonl
	$(BIN)/vtg eval --pred $(DEMO)/predictions.jsonl --gt $(DEMO)/data/val.jsonl
	$(BIN)/vtg index $(DEMO)/data/videos --checkpoint $(DEMO)/run/best --index $(DEMO)/index --rebuild
	@echo "demo: predictions in $(DEMO)/predictions.jsonl, report in $(DEMO)/report/index.html"
	@echo "demo: search the library in a browser: vtg serve --index $(DEMO)/index   (then open http://127.0.0.1:8000/)"

# The learning check (docs/BENCHMARKS.md): synthetic videos -> vtg-tiny features -> training -> `vtg eval`.
#   make learn                                                      # 500 videos, runs/learn/run
#   make learn RUN=control TRAIN_ARGS='fixed_query="a shape does something"'
LEARN        ?= runs/learn
LEARN_VIDEOS ?= 500
RUN          ?= run
TRAIN_ARGS   ?=

learn: setup
	@test -f $(LEARN)/data/val.jsonl || $(BIN)/vtg synth --out $(LEARN)/data --videos $(LEARN_VIDEOS) --seed 0
	$(BIN)/vtg extract $(LEARN)/data/videos --out $(LEARN)/data/features --model vtg-tiny --pretrained random:0
	$(BIN)/vtg train --config configs/synthetic.yaml data.root=$(LEARN)/data output_dir=$(LEARN)/$(RUN) $(TRAIN_ARGS)
	$(BIN)/vtg eval --pred $(LEARN)/$(RUN)/val_predictions.jsonl --gt $(LEARN)/data/val.jsonl

clean-demo:
	rm -rf $(DEMO)
