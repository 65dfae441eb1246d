# Everything a user or CI needs goes through these targets; each one builds .venv itself.
# Python 3.11 or newer; python3.11 when it is there, else python3.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest pytest-pgbouncer chaos bench soak pressure backlog fleet failover-runs schemathesis clean tools mutation mutation-sample

$(STAMP): pyproject.toml chaos/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { echo "need Python 3.11 or newer (set PYTHON=...)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet -e ./chaos
	@touch $(STAMP)

$(BIN)/helm: $(STAMP) scripts/get-helm.sh
	bash scripts/get-helm.sh $(BIN)

# promtool evaluates config/alerts.yml in tests/deploy/test_alert_rules.py.
$(BIN)/promtool: $(STAMP) scripts/get-promtool.sh
	bash scripts/get-promtool.sh $(BIN)

# tests/topology: PgBouncer and etcd (with etcdctl) unpacked from Debian's packages into
# .venv/tools (no system install); Patroni comes from the `ha` extra.
$(BIN)/pgbouncer: $(STAMP) scripts/get-debian-tool.sh
	bash scripts/get-debian-tool.sh pgbouncer pgbouncer $(BIN)

$(BIN)/etcd: $(STAMP) scripts/get-debian-tool.sh
	bash scripts/get-debian-tool.sh etcd-client etcdctl $(BIN)
	bash scripts/get-debian-tool.sh etcd-server etcd $(BIN)

# The bench saturates with wrk when it has it (the server-bound configuration needs it).
$(BIN)/wrk: $(STAMP) scripts/get-debian-tool.sh
	bash scripts/get-debian-tool.sh wrk wrk $(BIN)

tools: $(STAMP) $(BIN)/helm $(BIN)/promtool $(BIN)/pgbouncer $(BIN)/etcd

run: $(STAMP)
	$(BIN)/registry-proxy dev

# Style, then the design: the layer contracts in .importlinter, and no dead code (vulture,
# configured in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check proxy chaos tests bench
	$(BIN)/ruff format --check proxy chaos
	$(BIN)/lint-imports
	$(BIN)/vulture

typecheck: $(STAMP)
	$(BIN)/mypy proxy chaos

# Line and branch coverage of proxy/ and chaos/, child processes included; the floor and the
# exclusions are in pyproject.toml ([tool.coverage.*]).
# REGISTRY_PROXY_TEST_REQUIRE_HA: a PgBouncer, etcd or Patroni missing fails the topology tests
# here instead of skipping them.
pytest: tools
	REGISTRY_PROXY_TEST_REQUIRE_HA=1 PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest --cov --cov-report=term:skip-covered

# The integration and chaos suites again, every sidecar's pool through PgBouncer in transaction
# pooling with its direct DSN beside it (docs/fleet.md); coverage is the first run's.
pytest-pgbouncer: tools
	REGISTRY_PROXY_TEST_PGBOUNCER=1 REGISTRY_PROXY_TEST_REQUIRE_HA=1 PATH="$(CURDIR)/$(BIN):$$PATH" \
		$(BIN)/python -m pytest -p no:cacheprovider tests/integration tests/chaos

test: lint typecheck pytest pytest-pgbouncer mutation-sample

# Mutation testing (mutmut) of proxy/resilience, proxy/registry, the journal's record codec, the
# failover guard and the replica's counted events against tests/unit, in a scratch copy under
# build/; fails under 80% killed per package.
# Survivors that stay are explained in docs/mutation.md.
mutation: $(STAMP)
	$(BIN)/python scripts/mutation.py $(MUTATION_ARGS)

# A few dozen breaker mutants, so that the mutation tooling cannot rot unnoticed (under a minute).
mutation-sample: $(STAMP)
	$(BIN)/python scripts/mutation.py --sample --no-diffs

chaos: tools
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m chaos

bench: $(STAMP) $(BIN)/wrk
	$(BIN)/python -m bench

# 20 minutes by default; SOAK_MINUTES=3 or SOAK_HOURS=2 for another length.
soak: $(STAMP)
	$(BIN)/python -m bench.soak $(if $(SOAK_HOURS),--hours $(SOAK_HOURS))

# 200 paced clients, PostgreSQL cut off for 10 s behind Toxiproxy, then healed under load.
pressure: $(STAMP)
	$(BIN)/python -m bench.pressure

backlog: $(STAMP)
	$(BIN)/python -m bench.backlog

# 8 sidecars on one PostgreSQL, their pools through PgBouncer in transaction pooling: backends and
# queries at idle, propagation between sidecars, recovery from a 30 s outage (about 4 minutes);
# FLEET_ARGS go to bench.fleet (e.g. FLEET_ARGS="--sidecars 4 --direct").
fleet: $(STAMP) $(BIN)/pgbouncer
	$(BIN)/python -m bench.fleet $(FLEET_ARGS)

# The Patroni failover scenario (asynchronous replication, the leader killed under writes and
# reads) run FAILOVER_RUNS times in a row (10); stops at the first failure.
failover-runs: tools
	for run in $$(seq $(or $(FAILOVER_RUNS),10)); do \
		echo "failover run $$run"; \
		PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -s -p no:cacheprovider \
			tests/topology/test_failover.py || exit 1; \
	done

# A live sidecar on an embedded PostgreSQL, and schemathesis (every check) against its
# /openapi.json; ST_ARGS go to `st run` (e.g. ST_ARGS="--max-examples 1000 --seed 1").
schemathesis: $(STAMP)
	$(BIN)/python -m tests.schemathesis_run $(ST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* build/mutation build/mutation-sample
