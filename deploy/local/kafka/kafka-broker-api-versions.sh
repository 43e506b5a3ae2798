#!/bin/bash
# Stand-in for Kafka's kafka-broker-api-versions.sh, for healthchecks: exits 0
# iff a broker of --bootstrap-server HOST:PORT[,HOST:PORT...] answers a
# Metadata request naming at least one live broker (it prints those brokers,
# not the API version table of the real tool). Other options are ignored.
set -uo pipefail
servers=""
while (($#)); do
  case $1 in
    --bootstrap-server) servers=${2:-}; shift 2 || shift ;;
    --bootstrap-server=*) servers=${1#*=}; shift ;;
    *) shift ;;
  esac
done
if [[ -z $servers ]]; then
  echo "Missing required argument \"[bootstrap-server]\"" >&2
  exit 1
fi
IFS=',' read -ra list <<<"$servers"
for server in "${list[@]}"; do
  if python3 /opt/kafka/probe/kafka_probe.py "$server"; then exit 0; fi
done
exit 1
