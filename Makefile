# Everything runs inside .venv, created on first use from the system python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)/.dagster_home

.PHONY: demo test test-postgres dev serve lint format bench bench-local bench-latency bench-intake bench-scale clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

demo: $(BIN)/.installed $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m enrich_pipeline.demo

# One worker per core; a file's tests stay together so module fixtures are built once.
# Database-free: the tests that need a Postgres server are left to `make test-postgres`.
test: $(BIN)/.installed
	$(BIN)/python -m pytest -n auto --dist loadfile -m "not postgres"

# The tests marked `postgres`, each worker against an embedded Postgres of its own (a wheel: no
# root, apt or Docker); then the pipeline's own tests again with the warehouse in Postgres. The
# slow ones (processes killed or racing) are left out there: the `postgres` tests race processes
# that share nothing but the database.
POSTGRES_WAREHOUSE_TESTS := pipeline sensor schedule forget suppression raw_retention \
	warehouse_contacts warehouse_crm warehouse_enrichment crm_sync \
	intake_landing intake_service intake_app intake_write_back
test-postgres: $(BIN)/.installed
	$(BIN)/python -m pytest -n auto --dist loadfile -m postgres
	$(BIN)/python -m pytest -n auto --dist loadfile --warehouse=postgres \
		-m "not postgres and not slow" $(POSTGRES_WAREHOUSE_TESTS:%=enrich_pipeline_tests/test_%.py)

# The intake service runs beside the Dagster UI and stops with it.
dev: $(BIN)/.installed $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/enrich-pipeline serve & trap 'kill $$!' EXIT; $(BIN)/dagster dev -w workspace.yaml

serve: $(BIN)/.installed
	$(BIN)/enrich-pipeline serve

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(BIN)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# make bench BENCH_ARGS=--quick for a shorter run.
bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks.bench_rate_limit $(BENCH_ARGS)

bench-local: $(BIN)/.installed
	$(BIN)/python -m benchmarks.bench_local

bench-latency: $(BIN)/.installed
	$(BIN)/python -m benchmarks.bench_latency

bench-intake: $(BIN)/.installed
	$(BIN)/python -m benchmarks.bench_intake

bench-scale: $(BIN)/.installed
	$(BIN)/python -m benchmarks.bench_scale $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(DAGSTER_HOME) data/warehouse.duckdb data/warehouse.duckdb.wal data/exports \
		data/intake.sqlite3* data/hubspot_events.sqlite3*
