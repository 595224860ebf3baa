#!/usr/bin/env bash
# Start (or reuse) a single-machine cluster in the background and apply examples/hello.
set -euo pipefail
cd "$(dirname "$0")/.."
corral=.venv/bin/corral
data=${CORRAL_DEMO_DIR:-$HOME/.local/share/corral-demo}
port=${CORRAL_DEMO_PORT:-7070}
export CORRAL_CONFIG_DIR=${CORRAL_CONFIG_DIR:-$HOME/.config/corral}

if ! curl -fsS --cacert "$data/server/pki/ca.crt" "https://127.0.0.1:$port/healthz" \
    >/dev/null 2>&1; then
  $corral up --detach --data-dir "$data" --port "$port"
fi
$corral apply -f examples/hello/app.yaml
echo
$corral ps hello
port_of_first_web=$($corral ps hello --json | python3 -c \
  'import json,sys; print(next(i["ports"]["http"] for i in json.load(sys.stdin) if i["service"]=="web" and i["state"]=="running"))')
echo
echo "curl http://127.0.0.1:$port_of_first_web/"
curl -fsS "http://127.0.0.1:$port_of_first_web/"
echo
echo "The cluster keeps running. Try: $corral status; $corral logs hello -f; $corral events"
echo "Stop it with: make down"
