#!/usr/bin/env bash
# `make run`: the lab, the bot against it, and a Slack console in this terminal.
# Type slash commands as alice (`/etcd-status`), switch users with `/as bob`, press buttons by number.
set -euo pipefail
cd "$(dirname "$0")/.."
LAB_DIR=${1:-.lab}
BIN=.venv/bin

if $BIN/etcdbot-lab status --dir "$LAB_DIR" >/dev/null 2>&1; then
  echo "using the lab already running in $LAB_DIR" >&2
else
  echo "starting the lab in $LAB_DIR ..." >&2
  $BIN/etcdbot-lab up --dir "$LAB_DIR" >/dev/null
fi
mkdir -p "$LAB_DIR/logs"
LOG="$LAB_DIR/logs/bot.log"
LOG_START=$(stat -c %s "$LOG" 2>/dev/null || echo 0)
$BIN/etcdbot run --env-file "$LAB_DIR/env" >>"$LOG" 2>&1 &
BOT=$!
cleanup() {
  kill "$BOT" 2>/dev/null || true
  wait "$BOT" 2>/dev/null || true
  echo "stopping the lab ..." >&2
  $BIN/etcdbot-lab down --dir "$LAB_DIR" >/dev/null || true
}
trap cleanup EXIT
# The console's first command must find the bot connected (else the workspace answers
# "dispatch_failed", as Slack does): wait for its Socket Mode session, at most 60 s.
connected() { tail -c +$((LOG_START + 1)) "$LOG" | grep 'session (.*) has been established' >/dev/null; }
echo "starting the bot ..." >&2
for _ in $(seq 1 120); do
  if connected; then break; fi
  if ! kill -0 "$BOT" 2>/dev/null; then
    echo "the bot exited at start; the end of $LOG:" >&2
    tail -n 20 "$LOG" >&2
    exit 1
  fi
  sleep 0.5
done
connected || echo "the bot has not connected to the lab's Slack within 60 s (see $LOG); commands may fail until it does" >&2
cat >&2 <<MSG

etcdbot is running against a local OpenShift 4.5 lab (bot log: $LAB_DIR/logs/bot.log).
Try:  /etcd-help   /etcd-status   then, in another terminal:
      .venv/bin/etcdbot-lab fault kill-etcd \$(.venv/bin/etcdbot-lab status --dir $LAB_DIR --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["hosts"][0]["node"])') --dir $LAB_DIR
and /etcd-status again. /etcd-backup runs a backup: press Enter to see its progress.
/as bob switches user, a number presses a button, /quit leaves.

MSG
$BIN/etcdbot-lab slack console --dir "$LAB_DIR" --as alice --channel incident
