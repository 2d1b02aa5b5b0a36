#!/usr/bin/env bash
# The comparison with etcd is now one of Latch, etcd and ZooKeeper: bench/compare.sh, with the
# same environment (ROUNDS, CLIENTS, DURATION, …). Kept so that the commands and documents
# that name this script still work.
exec "$(dirname "$0")/compare.sh" "$@"
