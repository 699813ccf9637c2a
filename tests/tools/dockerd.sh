#!/usr/bin/env bash
# Makes a Docker engine available for the molecule scenarios, and afterwards stops only
# the one this script started.
#
#   dockerd.sh start   use the running engine if `docker info` answers, else start dockerd
#                      in the background and record its pid
#   dockerd.sh stop    stop dockerd only if this script started it (pid recorded and still
#                      a dockerd); an engine that was already running is left alone
#
# Env: PD_DOCKERD_STATE  directory for the pid and log files (default /tmp/openfuyao-pd-dockerd)
set -euo pipefail

STATE="${PD_DOCKERD_STATE:-/tmp/openfuyao-pd-dockerd}"
PIDFILE="$STATE/dockerd.pid"
LOG="$STATE/dockerd.log"

log() { echo "dockerd.sh: $*" >&2; }

ours_running() {
  [[ -s "$PIDFILE" ]] || return 1
  local pid
  pid="$(cat "$PIDFILE")"
  [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == dockerd ]]
}

start() {
  if docker info >/dev/null 2>&1; then
    log "a Docker engine is already running: using it"
    return 0
  fi
  command -v dockerd >/dev/null || { log "dockerd is missing: run 'make system-deps'"; return 2; }
  mkdir -p "$STATE"
  if ours_running; then
    log "dockerd $(cat "$PIDFILE") (ours) is starting"
  else
    # setsid: the engine must outlive the shell (and pytest) that started it.
    setsid dockerd >"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    log "started dockerd pid $(cat "$PIDFILE") (log $LOG)"
  fi
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    ours_running || { log "dockerd exited; last lines of $LOG:"; tail -n 20 "$LOG" >&2; return 1; }
    sleep 1
  done
  log "dockerd did not answer within 60 s; see $LOG"
  return 1
}

stop() {
  if ! ours_running; then
    log "no dockerd started by this script: nothing to stop"
    rm -f "$PIDFILE"
    return 0
  fi
  local pid
  pid="$(cat "$PIDFILE")"
  kill "$pid"
  for _ in $(seq 1 30); do
    [[ -d "/proc/$pid" ]] || break
    sleep 1
  done
  if [[ -d "/proc/$pid" ]]; then
    log "dockerd $pid ignored SIGTERM for 30 s: killing it"
    kill -9 "$pid" || true
  fi
  rm -f "$PIDFILE"
  log "stopped dockerd $pid"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
