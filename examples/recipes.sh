#!/usr/bin/env bash
# grpcurl and ghz against the edge, bounded: every load run has -n (calls) or -z
# (duration). EDGE (default 127.0.0.1:8080) and TOOLS (default .tools/bin) override.
# TOKEN (default: a dev token from `npm run token`) is sent as a bearer token: the edge
# lets anonymous callers make only a few calls a second.
#
#   bash examples/recipes.sh            # all of them, in order
#   bash examples/recipes.sh predict    # one: list | describe | predict | canary | echo | health | load-predict | load-echo
set -euo pipefail
cd "$(dirname "$0")/.."
EDGE=${EDGE:-127.0.0.1:8080}
T=${TOOLS:-.tools/bin}
TOKEN=${TOKEN:-$(npm run -s token -- --user recipes --tier premium)}
AUTH="authorization: Bearer $TOKEN"

recipe() {
  case "$1" in
    list) # reflection at the edge describes every service behind it
      "$T/grpcurl" -plaintext -max-time 10 "$EDGE" list ;;
    describe)
      "$T/grpcurl" -plaintext -max-time 10 "$EDGE" describe recsys.prediction.v1.PredictRequest ;;
    predict)
      "$T/grpcurl" -plaintext -max-time 10 -H "$AUTH" \
        -d '{"user_id":"u000001","num_predictions":5,"context":{"device":"DEVICE_MOBILE"}}' \
        "$EDGE" recsys.prediction.v1.PredictionService/Predict ;;
    canary) # force a version; -v prints the answer's headers (x-service-version)
      "$T/grpcurl" -plaintext -max-time 10 -v -H 'x-canary: v2' \
        -d '{"user_id":"u000002","num_predictions":3}' \
        "$EDGE" recsys.prediction.v1.PredictionService/Predict ;;
    echo) # any service behind the edge, with reflection alone
      "$T/grpcurl" -plaintext -max-time 10 -H "$AUTH" \
        -d '{"message":"hello"}' "$EDGE" recsys.echo.v1.EchoService/Echo ;;
    health)
      "$T/grpcurl" -plaintext -max-time 10 -d '{"service":""}' "$EDGE" grpc.health.v1.Health/Check ;;
    load-predict) # 200 calls, 4 at a time; an array of requests is sent round robin
      "$T/ghz" --insecure --call recsys.prediction.v1.PredictionService.Predict \
        -d '[{"user_id":"u000001"},{"user_id":"u000002"},{"user_id":"u000003","num_predictions":20}]' \
        -m "{\"authorization\":\"Bearer $TOKEN\"}" -n 200 -c 4 --timeout 5s "$EDGE" ;;
    load-echo) # 3 seconds at 4 concurrent callers
      "$T/ghz" --insecure --call recsys.echo.v1.EchoService.Echo -d '{"message":"hi"}' \
        -m "{\"authorization\":\"Bearer $TOKEN\"}" -z 3s -c 4 --timeout 5s "$EDGE" ;;
    *) echo "unknown recipe: $1" >&2; return 2 ;;
  esac
}

if [ $# -gt 0 ]; then
  for name in "$@"; do recipe "$name"; done
else
  for name in list describe predict canary echo health load-predict load-echo; do
    echo "== $name"
    recipe "$name"
  done
fi
