# rewardloop: `make help` lists the targets. The native stack (no Docker) lives in deploy/local;
# docker-compose.yml is the same stack for users with a Docker engine.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV       := .venv/bin
CRATE      := services/inner-reward-rs/Cargo.toml
NATIVE     := services/outer-controller/native/Cargo.toml
DURATION   ?= 60
E2E_RUN_DIR := $(CURDIR)/.run/e2e
COMPOSE    ?= $(shell command -v docker-compose >/dev/null 2>&1 && echo docker-compose || echo docker compose)

.PHONY: help install proto build start stop status run test test-unit test-e2e check compose-config clean

help: ## show this menu
	@echo "rewardloop: make <target>   (native stack state in .run/local, see docs/architecture.md)"
	@echo
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: ## install everything the native stack needs (apt, uv + .venv, proto stubs, Kafka jars, cargo build)
	@deploy/local/install.sh

proto: ## generate the Python gRPC stubs from proto/
	@$(VENV)/python libs/common/scripts/gen_proto.py

build: ## build the Rust scorer (release)
	cargo build --release --manifest-path $(CRATE)

start: ## start the native stack (Redis, Kafka, scorer, gateway, outer-controller) in the background
	@deploy/local/start.sh

stop: ## stop the native stack
	@deploy/local/stop.sh

status: ## show what of the native stack runs
	@deploy/local/status.sh; rc=$$?; [[ $$rc -eq 3 ]] && rc=0; exit $$rc

run: install start ## install, start, drive a simulated workload for DURATION seconds (default 60); leaves the stack running
	@set -a; source "$${RUN_DIR:-.run/local}/stack.env"; set +a; \
	$(VENV)/python -m rewardloop_sim.run --duration $(DURATION); rc=$$?; \
	echo; echo "The stack is still running (logs in .run/local/logs). Stop it with: make stop"; \
	exit $$rc

test: install install-trainer ## install (serving side + trainer env), then unit, trainer, quick learning bench, e2e and ops tests
	@rc=0; \
	$(MAKE) --no-print-directory test-unit || rc=$$?; \
	$(MAKE) --no-print-directory test-trainer || { r=$$?; [[ $$rc -ne 0 ]] || rc=$$r; }; \
	$(MAKE) --no-print-directory bench-learning BENCH_LEARNING_ARGS=--quick || { r=$$?; [[ $$rc -ne 0 ]] || rc=$$r; }; \
	$(MAKE) --no-print-directory test-e2e || { r=$$?; [[ $$rc -ne 0 ]] || rc=$$r; }; \
	$(MAKE) --no-print-directory test-ops || { r=$$?; [[ $$rc -ne 0 ]] || rc=$$r; }; \
	if [[ $$rc -eq 0 ]]; then echo "make test: all passed"; else echo "make test: FAILED (exit $$rc)"; fi; \
	exit $$rc

test-unit: ## unit tests: cargo test (release; scorer + the outer native core) and pytest for libs, services, tests/compose
	@rc=0; \
	REWARDLOOP_REQUIRE_KAFKA=1 cargo test --release --manifest-path $(CRATE) || rc=$$?; \
	cargo test --release --lib --manifest-path $(NATIVE) || { r=$$?; [[ $$rc -ne 0 ]] || rc=$$r; }; \
	$(VENV)/pytest libs services tests/compose || { r=$$?; [[ $$rc -ne 0 ]] || rc=$$r; }; \
	exit $$rc

test-e2e: ## end-to-end tests against a real native stack of their own (.run/e2e, other ports)
	@rc=0; $(VENV)/pytest tests/e2e -m e2e || rc=$$?; \
	RUN_DIR=$(E2E_RUN_DIR) deploy/local/stop.sh >/dev/null 2>&1 || true; \
	exit $$rc

check: ## lint: cargo fmt --check, clippy -D warnings (scorer + the outer controller's native core), ruff check + format --check
	cargo fmt --manifest-path $(CRATE) --check
	cargo clippy --release --manifest-path $(CRATE) --all-targets -- -D warnings
	cargo fmt --manifest-path $(NATIVE) --check
	cargo clippy --release --manifest-path $(NATIVE) -- -D warnings
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .

compose-config: ## validate docker-compose.yml (no Docker engine needed)
	@$(COMPOSE) -f docker-compose.yml config -q && echo "docker-compose.yml: ok"

clean: ## stop the native stacks and remove .run/ (state, logs, Kafka jars) and generated proto stubs
	-@deploy/local/stop.sh
	-@RUN_DIR=$(E2E_RUN_DIR) deploy/local/stop.sh
	-@RUN_DIR=$(CURDIR)/.run/ops deploy/local/stop.sh
	rm -rf .run libs/common/src/rewardloop_common/proto/gen

.PHONY: bench-scorer
bench-scorer: ## benchmark the inner-reward scorer vs an empty tonic service (scripts/bench_scorer.sh; BENCH_RATE, BENCH_DURATION, ...)
	scripts/bench_scorer.sh

SCORER_HOST ?= 127.0.0.1:50051
USERS ?= 20
SPAWN_RATE ?= 20
LOADTEST_DURATION ?= 30s
P99_BUDGET_MS ?= 5
.PHONY: loadtest
loadtest: ## Locust pre-rollout gate on the scorer (SCORER_HOST USERS SPAWN_RATE LOADTEST_DURATION P99_BUDGET_MS); fails over budget
	@mkdir -p reports/loadtest
	$(VENV)/locust -f loadtests/scorer_grpc.py --headless -u $(USERS) -r $(SPAWN_RATE) -t $(LOADTEST_DURATION) \
	  --host $(SCORER_HOST) --p99-budget-ms $(P99_BUDGET_MS) --csv reports/loadtest/scorer --html reports/loadtest/scorer.html

GATEWAY_URL ?= http://127.0.0.1:8000
GATEWAY_P99_BUDGET_MS ?= 100
.PHONY: loadtest-gateway
loadtest-gateway: ## Locust gate on the gateway: KPI events in, weights out (GATEWAY_URL USERS SPAWN_RATE LOADTEST_DURATION GATEWAY_P99_BUDGET_MS)
	@mkdir -p reports/loadtest
	$(VENV)/locust -f loadtests/gateway_http.py --headless -u $(USERS) -r $(SPAWN_RATE) -t $(LOADTEST_DURATION) \
	  --host $(GATEWAY_URL) --p99-budget-ms $(GATEWAY_P99_BUDGET_MS) --csv reports/loadtest/gateway --html reports/loadtest/gateway.html

OPS_RUN_DIR := $(CURDIR)/.run/ops
.PHONY: test-ops
test-ops: ## ops tests: promtool checks + rule unit tests, dashboard lint, every Grafana panel has data on a real stack (.run/ops, ~1 min)
	@rc=0; $(VENV)/pytest tests/ops || rc=$$?; \
	RUN_DIR=$(OPS_RUN_DIR) deploy/local/stop.sh >/dev/null 2>&1 || true; \
	exit $$rc

.PHONY: bench-outer bench-tuner bench-checkpoint bench-state bench-producer bench-consumer
bench-outer: ; $(VENV)/python services/outer-controller/bench/bench_outer.py $(BENCH_OUTER_ARGS) ## outer controller: events/s from real Kafka into durable session state + event-to-state lag P50/P99 (BENCH_OUTER_ARGS, e.g. --impl native|python --rate 5000,30000 --slate 5)
bench-checkpoint: ; $(VENV)/python services/outer-controller/bench/bench_checkpoint_write.py $(BENCH_CHECKPOINT_ARGS) ## outer controller: ms per fenced checkpoint write during compaction, redis-py's Python packer/parser vs hiredis side by side (private redis-server)
bench-state: ; $(VENV)/python services/outer-controller/bench/bench_state_size.py $(BENCH_STATE_ARGS) ## outer controller: state bytes per stored event (controller RSS, Redis log/snapshot) and RAM/Redis sizing per rate for the attribution window (in process, ~10 s)
bench-producer: ; $(VENV)/python services/outer-controller/bench/bench_producer.py $(BENCH_PRODUCER_ARGS) ## outer controller: loop-thread CPU per produced outbox record, confluent-kafka vs the native producer, alternated (real Kafka)
bench-consumer: ; $(VENV)/python services/outer-controller/bench/bench_consumer.py $(BENCH_CONSUMER_ARGS) ## outer controller: loop-thread CPU per consumed input record (consume + queue + apply), confluent-kafka vs the native consumer, alternated (real Kafka)
bench-tuner: ; $(VENV)/python services/outer-controller/bench/bench_tuner_slice.py $(BENCH_TUNER_ARGS) ## DRL-PUT tuner: sessions until it pushes a better action, per exploration slice (synthetic world, real Redis)

TRAINER_PY := .venv-trainer/bin/python
.PHONY: install-trainer test-trainer bench-learning
install-trainer: ## trainer env .venv-trainer with torch (services/trainer/scripts/install.sh; ~3 GB of CUDA wheels from PyPI, once)
	@services/trainer/scripts/install.sh

test-trainer: install-trainer ## trainer unit tests (credit model + export parity, OPE incl. Open Bandit Dataset, policies, service, its Kafka path on a real broker, benchmark helpers)
	@$(TRAINER_PY) -m pytest services/trainer/tests

bench-learning: install-trainer ## learning benchmark -> reports/learning/README.md + PNGs (MovieLens-grounded; BENCH_LEARNING_ARGS=--quick: CI size, synthetic world, .run/learning-quick)
	@$(TRAINER_PY) services/trainer/bench/bench_learning.py $(BENCH_LEARNING_ARGS)
