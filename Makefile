# edgekit tasks. `make` lists them. Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PIP    := $(PY) -m pip --disable-pip-version-check -q

SAMPLE := data/sample
DEMO   := runs/demo
# CPU-friendly demo settings: from scratch (no download), tiny model; the whole demo ~6 min on 2 cores.
# Augmentation: the default --augment auto picks it by a short pilot on the validation split.
DEMO_TRAIN := --weights none --alpha 0.35 --img-size 96 --epochs 60 --patience 15 --batch-size 32 --learning-rate 3e-3

require = $(if $(strip $($(1))),,$(error $(1) is not set: $(2)))

.DEFAULT_GOAL := help
.PHONY: help setup demo test train convert bench run lint clean

help: ## list the tasks
	@echo "edgekit - make <task> [VAR=value]"
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-16s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv and install this checkout with [train,device,onnx,dev] (no-op when up to date)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e '.[train,device,onnx,dev]'
	@touch $(STAMP)

$(SAMPLE)/video.avi: | $(STAMP)
	$(PY) -m train.sample_data --out $(SAMPLE)

demo: setup $(SAMPLE)/video.avi ## whole pipeline on built-in sample data: train, convert, bench, camera loop
	$(PY) -m train --data $(SAMPLE)/images --out $(DEMO) $(DEMO_TRAIN) --force
	$(PY) -m convert $(DEMO)
	$(PY) -m benchmarks $(DEMO)
	@rm -f $(DEMO)/camera.jsonl
	$(PY) -m edge_runtime run --model $(DEMO)/export/model_int8.tflite --source $(SAMPLE)/video.avi --output $(DEMO)/camera.jsonl
	$(PY) -m benchmarks video-check $(DEMO)/camera.jsonl $(SAMPLE)/video_labels.txt
	@echo
	@echo "Done. What the demo made:"
	@echo "  model for devices:  $(DEMO)/export/model_int8.tflite (float: model_float32.tflite; labels and golden cases inside)"
	@echo "  training:           $(DEMO)/metrics.json, $(DEMO)/training_curves.png, $(DEMO)/confusion_matrix.png, $(DEMO)/augment_preview.png"
	@echo "  conversion:         $(DEMO)/export/convert_report.md (top-1 per variant, drop vs float32, sizes)"
	@echo "  benchmark:          $(DEMO)/bench/report.md, $(DEMO)/bench/latency_vs_accuracy.png"
	@echo "  camera loop:        $(DEMO)/camera.jsonl (one JSON line per frame of $(SAMPLE)/video.avi)"
	@echo "Next: make live (the model on the sample video in your browser), make wheel then the"
	@echo "      README's 'On your Pi / Jetson / Coral', or make deploy HOST=user@host CONFIG=... MODEL=..."

test: setup ## run the test suite, less the slow tests (make test-slow; CI runs both)
	@{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null); } || echo "chromium/chromium-driver not installed: the browser tests will be skipped"
	$(PY) -m pytest -q tests -m "not slow"

.PHONY: wheel
wheel: ## the wheel a device installs (dist/edgekit_classify-*.whl; README: On your Pi / Jetson / Coral)
	@rm -f dist/edgekit_classify-*.whl
	$(or $(wildcard $(PY)),$(PYTHON)) -m pip wheel --no-deps -q --disable-pip-version-check . -w dist
	@echo "wrote $$(ls dist/edgekit_classify-*.whl); on the device: pip install '$$(ls dist/edgekit_classify-*.whl | xargs -n1 basename)[device]'"

.PHONY: test-slow
test-slow: setup ## the slow tests make test leaves out: each trains or converts a model of its own
	$(PY) -m pytest -q tests -m "slow and not field_demo" || [ $$? -eq 5 ]  # 5: none marked slow

.PHONY: test-field-demo
test-field-demo: setup $(DEPLOY_STAMP) ## the field loop's bounded form (field demo --ci) end to end with its goals, in CI (~8 min)
	@test -x /usr/sbin/sshd || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null); } || echo "openssh-server not installed: the field demo copies kept frames locally instead of collecting them"
	$(PY) -m pytest -q -p no:cacheprovider tests/test_field_demo.py -m field_demo $(ARGS)

# The IMX500 converter's own environment: Python 3.11, TF 2.15 / Keras 2, MCT (the converter
# pins numpy < 2); never mixed into .venv. Built once per key in a cache outside the clone,
# so a clean clone (CI) finds it: $(IMX500_CACHE)/KEY/venv, KEY = the requirements file's hash
# (not its mtime) + the Python version; .venv-imx500 is a symlink to it. The venv is made at
# its cache path (its scripts name their own path), under flock (two clones at once make it
# once), its .key written last (a half-made one is made again). Cache: /var/cache where
# writable, else ~/.cache; keys unused for 30 days are removed (2.3 GB each).
IMX500_PYTHON ?= python3.11
IMX500_VENV   := .venv-imx500
IMX500_REQ    := convert/imx500_requirements.txt
IMX500_CACHE  ?=

.PHONY: imx500-env test-imx500
imx500-env: ## the IMX500 converter's pinned environment (cached, linked as .venv-imx500; Java 17 via apt-get when root)
	@command -v java >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null; } || echo "java not found: install Java 17 (apt-get install openjdk-17-jre-headless); imxconv-tf needs it"
	@set -e; key=$$(sha256sum $(IMX500_REQ) | cut -c1-16); \
	command -v $(IMX500_PYTHON) >/dev/null 2>&1 || { echo "$(IMX500_PYTHON) not found: the IMX500 converter needs Python 3.11 (Debian 12: apt-get install python3.11-venv; elsewhere pip install uv, uv python install 3.11, then IMX500_PYTHON=\$$(uv python find 3.11))" >&2; exit 1; }; \
	pyv=$$($(IMX500_PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	cache="$(IMX500_CACHE)"; [ -n "$$cache" ] || { cache=/var/cache/edgekit-imx500; mkdir -p $$cache 2>/dev/null && [ -w $$cache ] || cache=$${XDG_CACHE_HOME:-$$HOME/.cache}/edgekit-imx500; }; \
	dir=$$cache/$$key-py$$pyv; env=$$dir/venv; mkdir -p $$dir; touch $$dir/last-used; \
	if [ "$$(cat $$env/.key 2>/dev/null)" != "$$key" ]; then \
	  exec 9>$$dir/lock; flock -n 9 || { echo "another make imx500-env is making $$env; waiting"; flock 9; }; \
	  if [ "$$(cat $$env/.key 2>/dev/null)" != "$$key" ]; then \
	    echo "making $$env (~2 min with a fast PyPI mirror, once per key)"; rm -rf $$env; \
	    $(IMX500_PYTHON) -m venv $$env; \
	    $$env/bin/python -m pip install --disable-pip-version-check -q -r $(IMX500_REQ); \
	    echo "$$key" > $$env/.key; \
	    find $$cache -mindepth 2 -maxdepth 2 -name last-used -mtime +30 | while read -r f; do rm -rf "$${f%/last-used}"; done; \
	  fi; \
	fi; \
	if [ "$$(readlink $(IMX500_VENV) 2>/dev/null)" = "$$env" ]; then echo "$(IMX500_VENV) -> $$env up to date"; exit 0; fi; \
	rm -rf $(IMX500_VENV); ln -sfn $$env $(IMX500_VENV); echo "$(IMX500_VENV) -> $$env"

test-imx500: setup imx500-env ## the real IMX500 conversion (slow): tiny run -> packerOut.zip, top-1 vs float32
	EDGEKIT_IMX500_REQUIRED=1 $(PY) -m pytest -q tests/test_imx500_convert.py

.PHONY: test-arm64
test-arm64: setup ## device tests on an emulated Raspberry Pi 4 (arm64 under qemu-user; root; skips without)
	$(PY) device_tests/arm64/run.py $(ARGS)

# $(VENV)/.deploy-stamp: the deploy extra (ansible-core), made by the deploy section below.
.PHONY: test-vm
test-vm: setup $(VENV)/.deploy-stamp ## make deploy into a virtual Pi: arm64 Debian + systemd under qemu-system (root; skips without)
	$(PY) device_tests/vm/run.py $(ARGS)

.PHONY: test-data
test-data: ## fetch Coral's reference models and photos (sha256-pinned) into data/coral for 16+ real-model tests
	$(or $(wildcard $(PY)),$(PYTHON)) -m tests.fetch_data --dest data/coral

.PHONY: real-data
real-data: setup ## real photos (Debian's Tux Paint stamps on real backgrounds, pinned .debs) into data/real: [ARGS=...]
	$(PY) -m train.realdata --out data/real $(ARGS)

train: setup ## train: make train DATA=photos/ RUN=runs/NAME [ARGS="--epochs 20"]
	$(call require,DATA,make train DATA=path/to/class_folders RUN=runs/NAME)
	$(call require,RUN,make train DATA=path/to/class_folders RUN=runs/NAME)
	$(PY) -m train --data $(DATA) --out $(RUN) $(ARGS)

convert: setup ## convert a run to TFLite: make convert RUN=runs/NAME
	$(call require,RUN,make convert RUN=runs/NAME)
	$(PY) -m convert $(RUN) $(ARGS)

bench: setup ## benchmark a run's models: make bench RUN=runs/NAME (default runs/demo)
	$(PY) -m benchmarks $(or $(RUN),$(DEMO)) $(ARGS)

.PHONY: bench-validate
bench-validate: setup ## harness vs ai-edge-litert's benchmark tool: [MODEL=m.tflite] [THREADS=1]
	$(PY) -m benchmarks validate $(or $(MODEL),$(DEMO)/export/model_int8.tflite) --threads $(or $(THREADS),1) $(ARGS)

.PHONY: bench-train
bench-train: setup $(SAMPLE)/video.avi ## training input pipeline, folder vs memory images/s: [DATA=dir] [ARGS=...]
	$(PY) -m train.bench_input --data $(or $(DATA),$(SAMPLE)/images) --json $(or $(OUT),runs/bench-train.json) $(ARGS)

.PHONY: bench-pipeline
bench-pipeline: setup ## daemon pipeline vs bare invoke(): [MODEL=m.tflite] [SOURCE=file|camera|camera-mjpg|camera-bgr] [ARGS=...]
	@test -f "$(or $(MODEL),runs/demo/export/model_int8.tflite)" || { echo "error: no model $(or $(MODEL),runs/demo/export/model_int8.tflite); run 'make demo' or pass MODEL=m.tflite" >&2; exit 2; }
	$(PY) -m benchmarks.pipeline --model $(or $(MODEL),runs/demo/export/model_int8.tflite) --source $(or $(SOURCE),file) --repeats $(or $(REPEATS),3) --json $(or $(OUT),runs/bench-pipeline.json) $(ARGS)

.PHONY: bench-http
bench-http: setup ## HTTP on 127.0.0.1: 50 clients x 20 /latest, 20 stalled stream clients: [MODEL=m.tflite] [ARGS=--strict]
	@test -f "$(or $(MODEL),runs/demo/export/model_int8.tflite)" || { echo "error: no model $(or $(MODEL),runs/demo/export/model_int8.tflite); run 'make demo' or pass MODEL=m.tflite" >&2; exit 2; }
	$(PY) -m benchmarks.abuse.http_load --model $(or $(MODEL),runs/demo/export/model_int8.tflite) --json $(or $(OUT),runs/bench-http.json) $(ARGS)

.PHONY: bench-abuse
bench-abuse: setup ## hostile models, images, profiles, 100 SIGTERMs, HTTP load via the CLIs: [MODEL=m.tflite] [LABELS=l] [ARGS=...]
	@test -f "$(or $(MODEL),runs/demo/export/model_int8.tflite)" || { echo "error: no model $(or $(MODEL),runs/demo/export/model_int8.tflite); run 'make demo' or pass MODEL=m.tflite" >&2; exit 2; }
	$(PY) -m benchmarks.abuse --model $(or $(MODEL),runs/demo/export/model_int8.tflite) $(if $(LABELS),--labels $(LABELS)) --out $(or $(OUT),runs/abuse.json) $(ARGS)

# (alpha, img-size) points for the latency-vs-accuracy sweep; each gets runs/sweep-A-S.
SWEEP ?= 0.35-96 0.5-128 0.75-160 1.0-224
.PHONY: sweep
sweep: setup ## train+convert+bench several MobileNetV2 sizes: make sweep DATA=photos/ [ARGS=...]
	$(call require,DATA,make sweep DATA=path/to/class_folders)
	@set -e; for p in $(SWEEP); do a=$${p%-*}; s=$${p#*-}; r=runs/sweep-$$a-$$s; \
	  $(PY) -m train --data $(DATA) --out $$r --alpha $$a --img-size $$s --force $(ARGS); \
	  $(PY) -m convert $$r --variants float32,int8; \
	  $(PY) -m benchmarks $$r; done
	$(PY) -m benchmarks report $(foreach p,$(SWEEP),runs/sweep-$(p)/bench) --out runs/sweep-report

run: setup ## camera loop: make run MODEL=m.tflite SOURCE=0|/dev/video0|file|url
	$(call require,MODEL,make run MODEL=path/to/model.tflite SOURCE=0)
	$(call require,SOURCE,make run MODEL=path/to/model.tflite SOURCE=0)
	$(PY) -m edge_runtime run --model $(MODEL) --source '$(SOURCE)' $(ARGS)

LIVE_PORT ?= 8080
.PHONY: live
live: setup $(SAMPLE)/video.avi ## live page: the sample video at its frame rate, looped: [MODEL=m.tflite] [LIVE_PORT=8080]
	@test -f "$(or $(MODEL),$(DEMO)/export/model_int8.tflite)" || { echo "error: no model $(or $(MODEL),$(DEMO)/export/model_int8.tflite); run 'make demo' or pass MODEL=m.tflite" >&2; exit 2; }
	@echo "Live page: http://127.0.0.1:$(LIVE_PORT)/  (Ctrl-C stops)"
	$(PY) -m edge_runtime run --model $(or $(MODEL),$(DEMO)/export/model_int8.tflite) --source $(SAMPLE)/video.avi --realtime --loop --http 127.0.0.1:$(LIVE_PORT) --output /dev/null

# Renders edge_runtime/data/edgekit.service for a profile into $(UNIT_DIR) and enables it (run as root).
UNIT_DIR ?= /etc/systemd/system
SERVICE_USER ?= edgekit
.PHONY: install-service
install-service: setup ## systemd service: make install-service CONFIG=device_configs/NAME.yaml [SERVICE_USER=pi]
	$(call require,CONFIG,make install-service CONFIG=device_configs/NAME.yaml)
	$(PY) -m edge_runtime unit --config $(CONFIG) --user $(SERVICE_USER) --python $(abspath $(PY)) > $(UNIT_DIR)/edgekit.service.tmp
	mv $(UNIT_DIR)/edgekit.service.tmp $(UNIT_DIR)/edgekit.service
	@getent group plugdev >/dev/null || groupadd --system plugdev
	@id -u $(SERVICE_USER) >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin --groups video,plugdev $(SERVICE_USER)
	@if [ -d /run/systemd/system ]; then systemctl daemon-reload && systemctl enable edgekit.service; fi
	@echo "Installed $(UNIT_DIR)/edgekit.service. Start: sudo systemctl start edgekit  Logs: journalctl -u edgekit -f"

lint: setup ## ruff
	$(PY) -m ruff check edge_runtime train convert benchmarks tests

clean: ## remove generated data and runs (keeps .venv)
	rm -rf data runs .pytest_cache

# Deploy: desktop -> devices over SSH (deploy/README.md). ansible-core comes with the deploy extra.
DEPLOY_STAMP := $(VENV)/.deploy-stamp
$(DEPLOY_STAMP): pyproject.toml | $(STAMP)
	$(PIP) install -e '.[deploy]'
	@touch $@
DEPLOY_TARGET = $(if $(INVENTORY),--inventory $(INVENTORY),--host $(HOST) $(if $(PORT),--port $(PORT))) \
	$(if $(SSH_KEY),--ssh-key $(SSH_KEY)) $(if $(SERIAL),--serial $(SERIAL)) \
	$(if $(MAX_FAIL),--max-fail-percent $(MAX_FAIL))
CONNECT = $(if $(INVENTORY),--inventory $(INVENTORY),--host $(HOST) $(if $(PORT),--port $(PORT))) \
	$(if $(SSH_KEY),--ssh-key $(SSH_KEY)) $(if $(filter 1 yes true,$(ACCEPT_NEW_HOST_KEY)),--accept-new-host-key)
DEPLOY_TARGET += $(if $(filter 1 yes true,$(ACCEPT_NEW_HOST_KEY)),--accept-new-host-key)
.PHONY: deploy rollback collect bench-fleet test-deploy
deploy: setup $(DEPLOY_STAMP) ## model to a device or fleet: make deploy HOST=user@host|INVENTORY=hosts.ini CONFIG=... MODEL=... [PORT= SSH_KEY= WHEELHOUSE=]
	$(if $(HOST)$(INVENTORY),,$(error HOST or INVENTORY is not set: make deploy HOST=user@host CONFIG=device_configs/NAME.yaml MODEL=m.tflite))
	$(call require,CONFIG,make deploy HOST=user@host CONFIG=device_configs/NAME.yaml MODEL=m.tflite)
	$(call require,MODEL,make deploy HOST=user@host CONFIG=device_configs/NAME.yaml MODEL=m.tflite)
	$(PY) -m deploy deploy $(DEPLOY_TARGET) --config $(CONFIG) --model $(MODEL) $(if $(WHEELHOUSE),--wheelhouse $(WHEELHOUSE)) $(ARGS)

rollback: setup $(DEPLOY_STAMP) ## previous release on a device or fleet: make rollback HOST=user@host|INVENTORY=hosts.ini [PORT= SSH_KEY=]
	$(if $(HOST)$(INVENTORY),,$(error HOST or INVENTORY is not set: make rollback HOST=user@host))
	$(PY) -m deploy rollback $(DEPLOY_TARGET) $(ARGS)

collect: setup $(DEPLOY_STAMP) ## kept frames home: make collect HOST=user@host|INVENTORY=hosts.ini OUT=field/ [PORT= SSH_KEY= KEEP_DIR= ACCEPT_NEW_HOST_KEY=1 ARGS=--remove]
	$(if $(HOST)$(INVENTORY),,$(error HOST or INVENTORY is not set: make collect HOST=user@host OUT=field/))
	$(call require,OUT,make collect HOST=user@host OUT=field/)
	$(PY) -m deploy collect $(CONNECT) --out $(OUT) $(if $(KEEP_DIR),--keep-dir $(KEEP_DIR)) $(ARGS)

bench-fleet: setup $(DEPLOY_STAMP) ## benchmarks on each device's release, merged report: make bench-fleet HOST=user@host|INVENTORY=hosts.ini [OUT=bench-fleet/ PORT= SSH_KEY= TIMEOUT=600 ARGS=--ssh-args ...]
	$(if $(HOST)$(INVENTORY),,$(error HOST or INVENTORY is not set: make bench-fleet HOST=user@host))
	$(PY) -m deploy bench-fleet $(CONNECT) --out $(or $(OUT),bench-fleet) $(if $(TIMEOUT),--timeout $(TIMEOUT)) $(ARGS)

test-deploy: setup $(DEPLOY_STAMP) ## deploy tests against real sshd on 127.0.0.1 (root; installs openssh-server; ~10 min)
	@test -x /usr/sbin/sshd || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null); } || echo "openssh-server not installed: the deploy tests will be skipped"
	$(PY) -m pytest -q -s -p no:cacheprovider device_tests/deploy $(ARGS)

# Fleet monitoring (deploy/monitor.py): Prometheus targets from the inventory, alert rules, Grafana dashboard.
.PHONY: monitor test-monitor
monitor: setup $(DEPLOY_STAMP) ## Prometheus config, alert rules, Grafana dashboard: make monitor INVENTORY=hosts.ini [OUT=monitoring/ CONFIG= MODEL= TOKEN_FILE= ARGS=--check]
	$(call require,INVENTORY,make monitor INVENTORY=hosts.ini OUT=monitoring/)
	$(PY) -m deploy monitor --inventory $(INVENTORY) --out $(or $(OUT),monitoring) $(if $(CONFIG),--config $(CONFIG)) $(if $(MODEL),--model $(MODEL)) $(if $(TOKEN_FILE),--token-file $(TOKEN_FILE)) $(ARGS)

test-monitor: setup $(DEPLOY_STAMP) ## monitor tests: promtool rules tests, a real Prometheus scraping 3 daemons (root installs prometheus; ~1 min)
	@command -v promtool >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null); } || echo "prometheus not installed: the monitor tests will be skipped"
	$(PY) -m pytest -q -p no:cacheprovider device_tests/monitor $(ARGS)

# The field loop on generated data (benchmarks/field_demo.py): the daemon keeps frames of a
# field video, collect brings them home over a loopback sshd, labels from the generator's
# truth, v2 retrained and compared with v1. FAST=1: fewer epochs, looser goals; CI runs the
# smaller --ci form through make test-field-demo.
.PHONY: field-demo
field-demo: setup $(DEPLOY_STAMP) ## field loop: keep, collect, label, retrain, compare v1/v2: [FAST=1] [V1=runs/demo] [ARGS=--strict]
	@test -x /usr/sbin/sshd || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null); } || echo "openssh-server not installed: the demo copies kept frames locally instead of collecting them"
	$(PY) -m benchmarks.field_demo $(if $(FAST),--fast,--train-args "$(DEMO_TRAIN)") $(if $(V1),--v1 $(V1)) $(ARGS)
