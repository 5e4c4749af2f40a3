# grpc-balancer — the seed's targets plus demo/test/bench. Everything runs from .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
SERVER_PORT ?= 50051
TARGET ?= static:///localhost:50051,localhost:50052
POLICY ?= round_robin
PROTO_DIR := src/grpc_balancer/demo

.PHONY: init generate generate-into run-server run-client demo test lint typecheck pytest bench bench-all system-deps js-deps clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.stamp-installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

## init: create .venv and install the package with its dev extras
init: $(VENV)/.stamp-installed

## generate: regenerate the greeter's, ORCA's and the load probe's protobuf code (namespaced paths)
# -Isrc: the files register as grpc_balancer/demo/greeter.proto,
# grpc_balancer/_orca/orca.proto and grpc_balancer/_probe/probe.proto (never clashing
# with a user's greeter.proto, orca.proto or probe.proto)
# and the generated code imports grpc_balancer.demo.greeter_pb2. The greeter keeps
# package greeter (wire name /greeter.Greeter/SayHello), so its descriptors go to a
# private pool: a user's own greeter.HelloRequest can live in the default pool.
# The output is committed as protoc writes it (ruff and mypy skip generated code), so
# the tree stays clean; tests/test_generated.py regenerates into a temporary directory.
generate: init
	$(MAKE) --no-print-directory generate-into GEN_OUT=src PY=$(PY)

GEN_OUT ?= src
generate-into:
	$(PY) -m grpc_tools.protoc -Isrc --python_out=$(GEN_OUT) --pyi_out=$(GEN_OUT) \
		--grpc_python_out=$(GEN_OUT) src/grpc_balancer/demo/greeter.proto
	$(PY) -m grpc_tools.protoc -Isrc --python_out=$(GEN_OUT) --pyi_out=$(GEN_OUT) \
		src/grpc_balancer/_orca/orca.proto
	$(PY) -m grpc_tools.protoc -Isrc --python_out=$(GEN_OUT) --pyi_out=$(GEN_OUT) \
		src/grpc_balancer/_probe/probe.proto
	sed -i 's/^DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(/# A private pool, not the default one: see `make generate`.\nPOOL = _descriptor_pool.DescriptorPool()\nDESCRIPTOR = POOL.AddSerializedFile(/' \
		$(GEN_OUT)/grpc_balancer/demo/greeter_pb2.py
	grep -q '^DESCRIPTOR = POOL.AddSerializedFile(' $(GEN_OUT)/grpc_balancer/demo/greeter_pb2.py

## run-server: one greeter server on $$SERVER_PORT (default 50051)
run-server: init
	SERVER_PORT=$(SERVER_PORT) $(BIN)/grpc-balancer serve

## run-client: call the servers in $$TARGET with $$POLICY (default round_robin)
run-client: init
	$(BIN)/grpc-balancer call --target '$(TARGET)' --policy $(POLICY)

## demo: start 3 servers, balance calls over them, stop them
demo: init
	$(BIN)/grpc-balancer demo

## system-deps: Debian's etcd-server and dnsmasq for the discovery tests
system-deps:
	@command -v etcd >/dev/null && command -v dnsmasq >/dev/null || { \
		echo "installing etcd-server and dnsmasq with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client dnsmasq-base >/dev/null; }

## lint: ruff check and format check
lint: init
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

## typecheck: mypy strict on src/
typecheck: init
	$(BIN)/mypy src

## js-deps: the grpc-js xDS client's packages, pinned by tests/xds_js/package-lock.json,
## installed into tests/xds_js/node_modules (never globally)
JS_DIR := tests/xds_js
$(JS_DIR)/node_modules/.stamp-ci: $(JS_DIR)/package.json $(JS_DIR)/package-lock.json
	@command -v npm >/dev/null || { echo "npm not found: Node 20 and npm are needed for the grpc-js xDS tests"; exit 1; }
	npm ci --prefix $(JS_DIR) --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@
js-deps: $(JS_DIR)/node_modules/.stamp-ci

pytest: init system-deps js-deps
	$(BIN)/pytest -q

## test: lint + mypy + pytest (installs what the tests need)
test: lint typecheck pytest

## bench: the policy benchmark suite and the fleet simulator, about 10 minutes (JSON + PNG in bench/results)
bench: init
	$(PY) -m bench.run_all
	$(PY) -m bench.sim
	$(PY) -m bench.figures --write

## bench-all: the suite plus every other benchmark under bench/ (about 25 minutes)
bench-all: bench system-deps js-deps
	$(PY) -m bench.bench_round_robin
	$(PY) -m bench.bench_prequal
	$(PY) -m bench.bench_failover
	$(PY) -m bench.bench_metrics
	$(PY) -m bench.bench_sync
	$(PY) -m bench.bench_cpu
	$(PY) -m bench.bench_instructions
	$(PY) -m bench.bench_bytecodes
	$(PY) -m bench.bench_dns
	$(PY) -m bench.bench_etcd
	$(PY) -m bench.bench_xds_clients
	$(PY) -m bench.bench_xds
	$(PY) -m bench.figures --write

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(JS_DIR)/node_modules
