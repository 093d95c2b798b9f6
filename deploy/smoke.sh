#!/usr/bin/env bash
# The README's curl examples against a running stack: make run, docker compose or a cluster.
#   SLUICE_SMOKE_KEY=<api key> deploy/smoke.sh [http://localhost:8080]
set -eu  # no pipefail: grep -q ends a stream early, and its status is the answer
BASE=${1:-http://localhost:8080}
KEY=${SLUICE_SMOKE_KEY:?set SLUICE_SMOKE_KEY to an API key of the stack}
AUTH=(-H "Authorization: Bearer $KEY")
fail() { echo "FAIL: $*" >&2; exit 1; }
check() { echo "ok: $1"; }

curl -sf "$BASE/healthz" | grep -q '"ok"' || fail "nginx /healthz"; check healthz
curl -sfN --max-time 10 "$BASE/toy-stream" | grep -q "End of stream." || fail toy-stream; check toy-stream
curl -sfN --max-time 10 "$BASE/dummy-counter" | grep -q "Count: 10" || fail dummy-counter; check dummy-counter
curl -sN --max-time 3 "$BASE/dummy-events" | grep -q "^event: " || fail dummy-events; check dummy-events
curl -sfN --max-time 20 "${AUTH[@]}" "$BASE/chat-stream?prompt=Tell+a+story" | grep -q . || fail chat-stream; check chat-stream
curl -sfN --max-time 20 "$BASE/v1/chat/completions" "${AUTH[@]}" -H 'Content-Type: application/json' \
  -d '{"model": "mock-gpt", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}' \
  | grep -q "data: \[DONE\]" || fail "v1/chat/completions"; check v1/chat/completions
curl -sf "$BASE/v1/models" "${AUTH[@]}" | grep -q '"data"' || fail v1/models; check v1/models
ID=$(curl -sf "$BASE/jobs" "${AUTH[@]}" -H 'Content-Type: application/json' \
  -d '{"kind": "simulate", "params": {"steps": 3, "delay": 0.1}}' | sed 's/.*"id":"\([^"]*\)".*/\1/')
[ -n "$ID" ] || fail "POST /jobs"; check "POST /jobs"
curl -sfN --max-time 20 "$BASE/jobs/$ID/events" "${AUTH[@]}" | grep -q "event: complete" \
  || fail "job events"; check "job events"
curl -sfN --max-time 30 "$BASE/progress" | grep -q "data: Done!" || fail progress; check progress
curl -sf "$BASE/logs" "${AUTH[@]}" -H "Accept: application/json" | grep -q '"files"' \
  || fail "GET /logs"; check "GET /logs (names)"
curl -sN --max-time 3 "$BASE/logs" | grep -q "Starting app" || fail "seed /logs"; check "seed /logs"
curl -s -o /dev/null -w "%{http_code}" "$BASE/metrics" | grep -q 404 || fail "/metrics exposed"
check "/metrics not exposed"
echo "all README examples passed against $BASE"
