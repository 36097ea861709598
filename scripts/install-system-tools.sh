#!/usr/bin/env bash
# Debian packages the test suite uses: promtool (package prometheus) for the alert-rule tests and
# docker-compose to validate docker-compose.yml without a Docker engine, Maven and Java 17 for the real
# Kafka broker of the kafka-marked tests (scripts/kafka-broker.sh), Graphviz (`dot`) that draws the
# data-flow map, and Chromium, the headless browser that loads the worker's map page in its test.
# Installed when missing and possible (root with apt-get, as in CI); otherwise the tests that need
# them say so (and fail, or are skipped naming the package, in CI).
set -euo pipefail
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v dot >/dev/null 2>&1 || missing+=(graphviz)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} (Debian packages) for the deploy, kafka and map tests" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "note: install the Debian packages ${missing[*]} to run the deploy, kafka and map tests" >&2
fi
