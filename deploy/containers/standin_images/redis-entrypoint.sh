#!/bin/sh
# As the official redis entrypoint: options alone mean redis-server; protected mode is off
# unless the arguments turn it back on (later options win).
set -eu
case "${1:-}" in -*|*.conf) set -- redis-server "$@" ;; esac
if [ "${1:-}" = redis-server ]; then
  shift
  set -- redis-server --protected-mode no "$@"
fi
exec "$@"
