#!/usr/bin/env bash
# Start (or reuse) a single-machine cluster in the background and apply an example:
# `scripts/demo.sh [hello|webshop]` (default hello). Re-running it changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
example=${1:-hello}
corral=.venv/bin/corral
data=${CORRAL_DEMO_DIR:-$HOME/.local/share/corral-demo}
port=${CORRAL_DEMO_PORT:-7070}
export CORRAL_CONFIG_DIR=${CORRAL_CONFIG_DIR:-$HOME/.config/corral}

case $example in
  hello) spec=examples/hello/app.yaml ;;
  webshop) spec=examples/webshop/webshop.yaml ;;
  *) echo "unknown example '$example' (hello, webshop)" >&2; exit 2 ;;
esac

if ! curl -fsS --cacert "$data/server/pki/ca.crt" "https://127.0.0.1:$port/healthz" \
    >/dev/null 2>&1; then
  $corral up --detach --data-dir "$data" --port "$port"
fi
$corral apply -f "$spec"
echo
$corral ps "$example"
echo

if [ "$example" = webshop ]; then
  # haproxy's static port, from the spec (8080 unless edited).
  lb_port=$(grep -o 'static: [0-9]*' "$spec" | head -1 | cut -d' ' -f2)
  echo "curl http://127.0.0.1:$lb_port/    (haproxy, round robin over the web instances)"
  for _ in 1 2 3; do curl -fsS "http://127.0.0.1:$lb_port/"; done
  echo
  echo "Roll the web tier to v2 under load: in one shell"
  echo "  while sleep 0.05; do curl -fsS http://127.0.0.1:$lb_port/ || echo FAILED; done"
  echo "and in another: $corral apply -f examples/webshop/webshop-v2.yaml"
else
  port_of_first_web=$($corral ps hello --json | python3 -c \
    'import json,sys; print(next(i["ports"]["http"] for i in json.load(sys.stdin) if i["service"]=="web" and i["state"]=="running"))')
  echo "curl http://127.0.0.1:$port_of_first_web/"
  curl -fsS "http://127.0.0.1:$port_of_first_web/"
fi
echo
echo "The cluster keeps running. Try: $corral status; $corral logs $example -f; $corral events"
echo "Stop it with: make down"
