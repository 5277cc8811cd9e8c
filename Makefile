# dfudet: every target creates or reuses .venv and installs the pinned dependencies first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dfudet-installed
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install demo reproduce-fuseg reproduce-fuseg-outlines reproduce-model shifted-eval lint test test-fast bench-loader bench-memory bench-train-step bench-infer bench-onnx clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

DEMO := runs/demo
DFUDET := $(VENV)/bin/dfudet

demo: $(STAMP)
	$(DFUDET) data demo --out $(DEMO)/raw --n 300 --seed 0
	$(DFUDET) data import --format coco --images $(DEMO)/raw/images \
	  --annotations $(DEMO)/raw/annotations/train.json --annotations $(DEMO)/raw/annotations/val.json \
	  --annotations $(DEMO)/raw/annotations/test.json --healthy $(DEMO)/raw/healthy --out $(DEMO)/dataset
	$(DFUDET) data prepare $(DEMO)/dataset --out $(DEMO)/cache --img-size 320
	$(DFUDET) train --config configs/demo.yaml --baseline --require-improvement
	$(DFUDET) evaluate --checkpoint $(DEMO)/train/best_model.pth --data $(DEMO)/cache --split test \
	  --out $(DEMO)/report --bootstrap 1000 --compare $(DEMO)/train/untrained_model.pth
	$(DFUDET) evaluate --checkpoint $(DEMO)/train/untrained_model.pth --data $(DEMO)/cache --split test \
	  --out $(DEMO)/report-untrained
	@echo "demo report: $(DEMO)/report/report.md (the untrained model for comparison: $(DEMO)/report-untrained)"

# Reference CPU result on real photos (docs/results.md): FUSeg import -> cache (at the config's data.img_size) ->
# train -> tune (the inference input size and its threshold, chosen on val among train.tune_img_sizes when one beats
# the training size in 95% of paired val resamples, train.tune_confidence; none listed: the training size) ->
# evaluate the tuned model on val and on test (the reported table, bootstrap CIs) and the untrained model on test.
# FUSEG_CONFIG=configs/fuseg_cpu.yaml reproduces the two-stage (Faster R-CNN) result instead.
FUSEG ?= ../shared/data/fuseg
FUSEG_CONFIG ?= configs/fuseg_cpu_fcos.yaml
FUSEG_RUN ?= runs/$(basename $(notdir $(FUSEG_CONFIG)))
# coco: the boxes of annotations/*.json; masks: the wound masks (boxes from their components, and the outlines)
FUSEG_FORMAT ?= coco
FUSEG_IMPORT_coco = --format coco --images $(FUSEG)/images --annotations $(FUSEG)/annotations/train.json \
  --annotations $(FUSEG)/annotations/val.json --annotations $(FUSEG)/annotations/test.json
FUSEG_IMPORT_masks = --format masks --images $(FUSEG)/images --annotations $(FUSEG)/masks
# healthy-photo folders to add as ulcer-free photos (`--healthy DIR` each; their train/val/test subfolders set splits)
FUSEG_HEALTHY ?=
TIMEV := $(shell test -x /usr/bin/time && echo /usr/bin/time -v -o $(FUSEG_RUN)/train-time.txt)  # wall time, peak RSS
reproduce-fuseg: $(STAMP)
	test -d $(FUSEG)/images || { echo "FUSeg data not found at $(FUSEG) (set FUSEG=...)"; exit 2; }
	$(DFUDET) data import $(FUSEG_IMPORT_$(FUSEG_FORMAT)) $(foreach h,$(FUSEG_HEALTHY),--healthy $(h)) \
	  --out $(FUSEG_RUN)/dataset
	size=$$($(PY) -c 'import sys; from dfudet.config import load_config; print(load_config(sys.argv[1]).data.img_size)' \
	  $(FUSEG_CONFIG)) && $(DFUDET) data prepare $(FUSEG_RUN)/dataset --out $(FUSEG_RUN)/cache --img-size $$size
	$(TIMEV) $(DFUDET) train --config $(FUSEG_CONFIG) --run-dir $(FUSEG_RUN)/train data.cache=$(FUSEG_RUN)/cache \
	  --baseline
	-grep -E "Elapsed|Maximum resident" $(FUSEG_RUN)/train-time.txt
	$(DFUDET) tune --checkpoint $(FUSEG_RUN)/train/best_model.pth --data $(FUSEG_RUN)/cache \
	  --out $(FUSEG_RUN)/train/tuned_model.pth
	$(DFUDET) evaluate --checkpoint $(FUSEG_RUN)/train/tuned_model.pth --data $(FUSEG_RUN)/cache --split val \
	  --out $(FUSEG_RUN)/report-val
	$(DFUDET) evaluate --checkpoint $(FUSEG_RUN)/train/tuned_model.pth --data $(FUSEG_RUN)/cache --split test \
	  --out $(FUSEG_RUN)/report-test --bootstrap 1000
	$(DFUDET) evaluate --checkpoint $(FUSEG_RUN)/train/untrained_model.pth --data $(FUSEG_RUN)/cache --split test \
	  --out $(FUSEG_RUN)/report-test-untrained
	@echo "FUSeg reports: $(FUSEG_RUN)/report-val/report.md $(FUSEG_RUN)/report-test/report.md"

# Outlines and wound area (docs/results.md): the same steps on FUSeg's wound masks with Mask R-CNN; the test report
# adds wound-pixel Dice/IoU and per-ulcer area error to the detection figures. Then `dfudet track` over FUSeg test
# photos at three zoom levels with matching scales (FUSeg has no patient series: a scale-consistency check).
OUTLINE_RUN := runs/fuseg_cpu_maskrcnn
reproduce-fuseg-outlines: $(STAMP)
	$(MAKE) reproduce-fuseg FUSEG_CONFIG=configs/fuseg_cpu_maskrcnn.yaml FUSEG_FORMAT=masks
	$(PY) scripts/fuseg_zoom_visits.py --fuseg $(FUSEG) --out $(OUTLINE_RUN)/zoom_visits --n 12
	$(DFUDET) track $(OUTLINE_RUN)/zoom_visits/visits.csv --checkpoint $(OUTLINE_RUN)/train/tuned_model.pth \
	  --out $(OUTLINE_RUN)/zoom_visits/track

# The shipped model (docs/model_card.md): FUSeg's wound masks + the fixed healthy-feet split (configs/splits/) as
# ulcer-free photos, Mask R-CNN + Lite0 (configs/dfu_shipped.yaml); then the held-out healthy feet and the shifted test.
HEALTHY ?= ../shared/data/healthy_feet
MODEL_RUN := runs/dfu_shipped
reproduce-model: $(STAMP)
	$(PY) scripts/healthy_feet_split.py layout --images $(HEALTHY)/images --out $(MODEL_RUN)/healthy
	$(MAKE) reproduce-fuseg FUSEG_CONFIG=configs/dfu_shipped.yaml FUSEG_FORMAT=masks FUSEG_HEALTHY=$(MODEL_RUN)/healthy

# The shifted sets (dfudet.data.shifted; recipe in runs/shifted/raw/README.md): FUSeg val/test wounds pasted on the
# healthy-feet val/test photos at 0.5x/1x/1.5x, FUSeg val/test photos at 320 px wide, and under colour casts; built
# from held-out material only, imported with their masks, cached at the photos' own size, and CHECKPOINT scored on
# shifted val and shifted test, then on each subset of the splits in SHIFTED_SUBSETS (empty: none).
SHIFTED := runs/shifted
SHIFTED_SEED ?= 0
SHIFTED_SUBSETS ?= test
SHIFTED_OUT ?= $(dir $(CHECKPOINT))shifted
shifted-eval: $(STAMP)
	test -n "$(CHECKPOINT)" || { echo "usage: make shifted-eval CHECKPOINT=RUN_DIR/train/tuned_model.pth"; exit 2; }
	test -d $(FUSEG)/images || { echo "FUSeg data not found at $(FUSEG) (set FUSEG=...)"; exit 2; }
	for split in val test; do \
	  $(DFUDET) data shifted --fuseg $(FUSEG) --healthy $(HEALTHY)/images \
	    --healthy-split configs/splits/healthy_feet.csv --split $$split --out $(SHIFTED)/raw --seed $(SHIFTED_SEED) \
	    || exit 1; \
	done
	$(DFUDET) data import --format coco --images $(SHIFTED)/raw/images \
	  --annotations $(SHIFTED)/raw/annotations/val.json --annotations $(SHIFTED)/raw/annotations/test.json \
	  --out $(SHIFTED)/dataset
	$(DFUDET) data prepare $(SHIFTED)/dataset --out $(SHIFTED)/cache --img-size 0
	$(DFUDET) evaluate --checkpoint $(CHECKPOINT) --data $(SHIFTED)/cache --split val --out $(SHIFTED_OUT)/report-val \
	  --bootstrap 1000
	$(DFUDET) evaluate --checkpoint $(CHECKPOINT) --data $(SHIFTED)/cache --split test \
	  --out $(SHIFTED_OUT)/report-test --bootstrap 1000
	for split in $(SHIFTED_SUBSETS); do for shift in pasted lowres color; do \
	  $(DFUDET) evaluate --checkpoint $(CHECKPOINT) --data $(SHIFTED)/raw/subsets/$$split-$$shift.json \
	    --images $(SHIFTED)/raw/images --out $(SHIFTED_OUT)/report-$$split-$$shift --bootstrap 1000 || exit 1; \
	done; done
	@echo "shifted reports: $(SHIFTED_OUT)/report-{val,test}/report.md (subsets: $(SHIFTED_OUT)/report-<split>-<shift>)"

# ruff over the Python code, then mypy (its files and settings: [tool.mypy] in pyproject.toml)
lint: $(STAMP)
	$(PY) -m ruff check src tests bench scripts
	$(PY) -m mypy

# -n auto: one pytest-xdist worker per core, each with one torch thread (tests/conftest.py)
test: $(STAMP) lint
	bash scripts/ensure-browser.sh
	$(PY) -m pytest -q -n auto

test-fast: $(STAMP)
	$(PY) -m pytest -q -n auto -m "not slow"

bench-loader: $(STAMP)
	$(PY) bench/loader.py --out bench/results/loader.json

bench-memory: $(STAMP)
	$(PY) bench/memory.py --cache $(DEMO)/cache --out bench/results/memory.json

bench-infer: $(STAMP)
	$(PY) bench/infer.py --no-channels-last --out bench/results/infer.json  # NCHW, as docs/benchmarks.md

bench-onnx: $(STAMP)
	$(PY) bench/onnx_speed.py --no-channels-last --out bench/results/onnx_speed.json  # NCHW, as docs/benchmarks.md

bench-train-step: $(STAMP)
	$(PY) bench/train_step.py --no-channels-last --out bench/results/train_step.json  # NCHW, as docs/benchmarks.md

clean:
	rm -rf runs/demo
