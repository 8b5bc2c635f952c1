#!/usr/bin/env bash
# demo.sh: the main job on the embedded default. Starts the local stack
# (Temporal dev server, localhub, worker), a simulated device, reboots it
# through the Reboot workflow and updates its firmware through FirmwareUpdate
# (a device already on the version is skipped), does both again on a device
# that speaks only the tutorials' contract (no IDs, no version, Python's local
# times, a firmware answer that is a JSON string), then rolls a firmware version
# out to a simulated fleet of 100 devices through the Rollout workflow, with
# its live progress bar, and prints the rollout's report. Leaves the stack up
# until Ctrl-C; with DEMO_EXIT=1 stops everything it started and exits with
# the demo's status.
set -euo pipefail

cd "$(dirname "$0")/.."
STATE=${DMFLOW_STATE_DIR:-.dmflow}
BIN=${DMFLOW_BIN_DIR:-.bin}
DEVICE=${DEMO_DEVICE:-dev-001}
# A device built from the tutorials, unchanged: dmflow must work on it too.
TUTORIAL_DEVICE=${DEMO_TUTORIAL_DEVICE:-tutorial-001}
# The tutorial's device takes 20 s to reboot and 15 s per firmware stage; the
# demo keeps that unless told.
REBOOT_DURATION=${DEMO_REBOOT_DURATION:-20s}
STAGE_DURATION=${DEMO_STAGE_DURATION:-15s}
FW_VERSION=${DEMO_FIRMWARE_VERSION:-2.0.0}
# The rollout's fleet: ROLLOUT_DEVICES devices beta-001 … tagged ring=beta,
# with 1 s stages so that the five waves (5, 10, 20, 40, 25 devices) take
# about 40 s. Seed 2 makes 2% of them fail every update (beta-067 in wave 4,
# beta-088 in wave 5): within the 10% threshold, so the rollout completes and
# shows how failed devices are reported. 0 devices skips the rollout.
ROLLOUT_DEVICES=${DEMO_ROLLOUT_DEVICES:-100}
ROLLOUT_STAGE_DURATION=${DEMO_ROLLOUT_STAGE_DURATION:-1s}
ROLLOUT_SEED=${DEMO_ROLLOUT_SEED:-2}
ROLLOUT_FAILING=${DEMO_ROLLOUT_FAILING:-0.02}
# A share of the fleet speaks only the tutorials' contract (seeded, among the
# devices that do not fail): the report shows them updated, "version not
# reported by the device".
ROLLOUT_TUTORIAL=${DEMO_ROLLOUT_TUTORIAL:-0.3}
# Empty: each demo run rolls out the next version (see next_rollout).
ROLLOUT_VERSION=${DEMO_ROLLOUT_VERSION:-}
FLEET=simdevice-fleet
stack=scripts/stack.sh

# rollout is the name of the rollout this run started or follows, once known:
# an interrupted demo cancels it, so that it does not resume on the next start
# of the stack while the restarted fleet has forgotten the updates in flight.
rollout=""
# child is the starter command running, if any.
child=""
cleanup() {
  if [ -n "$child" ]; then
    kill -TERM "$child" 2>/dev/null || true
    wait "$child" 2>/dev/null || true
  fi
  if [ -n "$rollout" ] && [ -f "$STATE/worker.pid" ]; then
    timeout 30 "$BIN/starter" rollout cancel "$rollout" --reason "demo stopped" >/dev/null 2>&1 &&
      echo "cancelled rollout $rollout" || true
  fi
  "$stack" down || true
}
if [ "${DEMO_EXIT:-0}" = 1 ]; then trap cleanup EXIT; fi
# A Ctrl-C during the demo stops everything too (the stack runs in sessions of
# its own, so the signal reaches only this script and its foreground command).
trap 'echo; cleanup; trap - EXIT; exit 130' INT TERM

# run CMD...: runs a starter command and returns its status. The starter
# handles Ctrl-C itself (it stops following the workflow and exits 1), and
# bash acts on a SIGINT that arrives while it waits for a foreground command
# only if the command died of it; waiting with the wait builtin instead lets
# the trap above run at once. (As an asynchronous command the starter starts
# with SIGINT ignored, which Go's signal.Notify undoes.)
run() {
  local rc=0
  "$@" &
  child=$!
  wait "$child" || rc=$?
  child=""
  return "$rc"
}

# next_rollout picks the version and name of this run's rollout and prints
# them ("VERSION NAME"). Rollout names run once (a second start of a name
# attaches to it), and a fleet already on a version skips it; so each run
# rolls out the next minor version, 2.1.0, 2.2.0, …: the first whose rollout
# demo-<version> does not exist yet. A demo rollout still running was left by
# a demo that was killed: the fleet restarted since and forgot its updates in
# flight, so it is cancelled first. DEMO_ROLLOUT_VERSION pins the version: a
# rollout of it that ran before is shown again, not repeated.
next_rollout() {
  local list n status highest=0 pinned=""
  list=$("$BIN/temporal" workflow list --query "WorkflowType = 'Rollout'" -o jsonl 2>/dev/null |
    sed -n 's/.*"workflowId":"rollout\/demo-\([^"]*\)".*"status":"WORKFLOW_EXECUTION_STATUS_\([A-Z_]*\)".*/\1 \2/p') ||
    true
  while read -r v status; do
    [ -n "$v" ] || continue
    if [ "$v" = "$ROLLOUT_VERSION" ]; then
      pinned=$status
      continue
    fi
    if [[ $v =~ ^2\.([0-9]+)\.0$ ]]; then
      n=${BASH_REMATCH[1]}
      ((n > highest)) && highest=$n
    fi
    if [ "$status" = RUNNING ]; then
      echo "cancelling rollout demo-$v, left running by an earlier demo run" >&2
      "$BIN/starter" rollout cancel "demo-$v" --reason "left running by an interrupted demo" >/dev/null || true
    fi
  done <<<"$list"
  if [ -n "$ROLLOUT_VERSION" ]; then
    echo "$ROLLOUT_VERSION demo-$ROLLOUT_VERSION $pinned"
  else
    echo "2.$((highest + 1)).0 demo-2.$((highest + 1)).0"
  fi
}

t0=$(date +%s)
"$stack" up
# shellcheck disable=SC1091
. "$STATE/env"

"$stack" start "simdevice-$DEVICE" "$BIN/simdevice" --device-id "$DEVICE" \
  --reboot-duration "$REBOOT_DURATION" --stage-duration "$STAGE_DURATION"
"$stack" start "simdevice-$TUTORIAL_DEVICE" "$BIN/simdevice" --device-id "$TUTORIAL_DEVICE" \
  --contract tutorial --answer string --reboot-duration "$REBOOT_DURATION" --stage-duration "$STAGE_DURATION"
if ((ROLLOUT_DEVICES > 0)); then
  # The fleet registers and connects while the single device's demo runs.
  "$stack" start "$FLEET" "$BIN/simdevice" fleet --count "$ROLLOUT_DEVICES" --prefix beta- --tags ring=beta \
    --seed "$ROLLOUT_SEED" --failing "$ROLLOUT_FAILING" --tutorial "$ROLLOUT_TUTORIAL" --stage-duration "$ROLLOUT_STAGE_DURATION"
fi
"$stack" wait-for "simdevice $DEVICE" "$STATE/simdevice-$DEVICE.pid" "$STATE/simdevice-$DEVICE.log" "simdevice ready" 30
echo "simdevice ready  device=$DEVICE reboot-duration=$REBOOT_DURATION stage-duration=$STAGE_DURATION (log: $STATE/simdevice-$DEVICE.log)"
echo
echo "\$ starter reboot --device $DEVICE --wait"
status=0
run "$BIN/starter" reboot --device "$DEVICE" --wait || status=$?
echo
uri="https://fw.example/dmflow-$FW_VERSION.bin"
# One update ID per version: a demo run again finds the update it started
# before (running or done) instead of starting a second one.
echo "\$ starter firmware --device $DEVICE --uri $uri --version $FW_VERSION --update-id demo-$FW_VERSION --wait"
run "$BIN/starter" firmware --device "$DEVICE" --uri "$uri" --version "$FW_VERSION" --update-id "demo-$FW_VERSION" --wait || status=$?

"$stack" wait-for "simdevice $TUTORIAL_DEVICE" "$STATE/simdevice-$TUTORIAL_DEVICE.pid" "$STATE/simdevice-$TUTORIAL_DEVICE.log" "simdevice ready" 30
echo
echo "$TUTORIAL_DEVICE speaks only the tutorials' contract: it reports no request or update ID and no version,"
echo "writes Python's local time, and answers firmwareUpdate with a JSON string."
echo "\$ starter reboot --device $TUTORIAL_DEVICE --wait"
run "$BIN/starter" reboot --device "$TUTORIAL_DEVICE" --wait || status=$?
echo
# Its version is unknown, so it is never skipped: each demo run updates it again, under its
# own update ID.
echo "\$ starter firmware --device $TUTORIAL_DEVICE --uri $uri --version $FW_VERSION --wait"
run "$BIN/starter" firmware --device "$TUTORIAL_DEVICE" --uri "$uri" --version "$FW_VERSION" --wait || status=$?

if ((ROLLOUT_DEVICES > 0)); then
  echo
  # Registering, tagging and connecting take a few seconds; the targets are
  # resolved once, at the start, so every device must be tagged by then.
  "$stack" wait-for "simdevice fleet" "$STATE/$FLEET.pid" "$STATE/$FLEET.log" 'msg="fleet started"' 120
  echo "simdevice fleet ready  $ROLLOUT_DEVICES devices tagged ring=beta, stage-duration=$ROLLOUT_STAGE_DURATION (log: $STATE/$FLEET.log)"
  grep 'msg="fleet profile"' "$STATE/$FLEET.log" |
    sed -n 's/.* profile=\([a-z]*\) count=\([0-9]*\) devices=\([^ ]*\).*/  \1: \2 (\3)/p' || true
  grep 'msg="fleet contract" contract=tutorial' "$STATE/$FLEET.log" |
    sed -n 's/.* answer=\([a-z]*\) count=\([0-9]*\) devices=\([^ ]*\).*/  on the tutorials'"'"' contract, answering with a JSON \1: \2 (\3)/p' || true
  read -r rversion rollout ran_before < <(next_rollout)
  ruri="https://fw.example/dmflow-$rversion.bin"
  query="SELECT * FROM devices WHERE tags.ring = 'beta'"
  echo
  if [ -n "$ran_before" ]; then
    echo "NOTE: rollout $rollout was started by an earlier demo (its workflow is $(tr '[:upper:]_' '[:lower:] ' <<<"$ran_before")), and a"
    echo "      name runs once: the start below follows or shows that rollout instead of running it again."
    echo "      Unset DEMO_ROLLOUT_VERSION to roll out the next version."
  fi
  echo "\$ starter rollout start --name $rollout --query \"$query\" --firmware $ruri --version $rversion --canary 5 --growth 2 --max-concurrent 50 --rate 50/s --max-failures 10% --wait"
  # Exit 1 means "completed with failed devices" as well as aborted or
  # cancelled: the rollout's state below tells them apart.
  run "$BIN/starter" rollout start --name "$rollout" --query "$query" --firmware "$ruri" --version "$rversion" \
    --canary 5 --growth 2 --max-concurrent 50 --rate 50/s --max-failures 10% --wait || true
  progress=$("$BIN/starter" rollout status "$rollout" -o json 2>/dev/null) || true
  state=$(sed -n 's/^  "state": "\(.*\)",$/\1/p' <<<"$progress")
  failed=$(sed -n 's/^  "failed": \([0-9]*\),$/\1/p' <<<"$progress")
  echo
  report="$STATE/rollout-$rollout.txt"
  if "$BIN/starter" rollout report "$rollout" --out "$report" >/dev/null; then
    echo "\$ starter rollout report $rollout    (the devices not updated, and the totals; every device in $report)"
    awk 'NR == 1 || /^[0-9]+ devices?:/ { print; next }
      $3 != "updated" && ++n <= 10 { print }
      END { if (n > 10) print "… and " n - 10 " more devices not updated" }' "$report"
  else
    status=1
  fi
  echo
  case "$state" in
    completed)
      if [ "${failed:-0}" -gt 0 ]; then
        echo "rollout $rollout completed: its $failed failed devices are the seeded ones (simdevice fleet --failing $ROLLOUT_FAILING --seed $ROLLOUT_SEED), within --max-failures 10%"
      else
        echo "rollout $rollout completed"
      fi ;;
    *)
      echo "rollout $rollout ended ${state:-in an unknown state}: see starter rollout status $rollout"
      status=1 ;;
  esac
  ns=${TEMPORAL_NAMESPACE:-default}
  echo "  the rollout in the Temporal UI:      $DMFLOW_TEMPORAL_UI/namespaces/$ns/workflows/rollout%2F$rollout"
  echo "  with its devices' workflows:         $DMFLOW_TEMPORAL_UI/namespaces/$ns/workflows?query=DmflowRollout%3D%22$rollout%22"
  # Done: nothing to cancel on the way out.
  rollout=""
fi
echo
echo "demo took $(($(date +%s) - t0))s; Temporal UI: $DMFLOW_TEMPORAL_UI"

if [ "${DEMO_EXIT:-0}" = 1 ]; then
  exit "$status"
fi
echo "The stack stays up; Ctrl-C stops it. Try, in another shell:"
echo "  source $STATE/env"
echo "  $BIN/starter reboot --device $DEVICE --wait"
echo "  curl -s http://127.0.0.1:${DMFLOW_METRICS_PORT:-9464}/metrics | grep '^dmflow_'    # the worker's metrics"
if ((ROLLOUT_DEVICES > 0)); then
  echo "  $BIN/starter rollout start --name my-2.9.0 --query \"SELECT * FROM devices WHERE tags.ring = 'beta'\" --firmware https://fw.example/v2.9.bin --version 2.9.0 --canary 5 --wait"
  echo "  $BIN/starter schedule create weekly-beta --cron \"0 2 * * SUN\" --timezone Europe/Warsaw --reconcile --query \"SELECT * FROM devices WHERE tags.ring = 'beta'\" --firmware https://fw.example/v2.9.bin --version 2.9.0 --window \"0 2 * * SUN for 4h in Europe/Warsaw\""
  echo "  $BIN/starter schedule trigger weekly-beta      (then: Temporal UI -> Schedules, $DMFLOW_TEMPORAL_UI/namespaces/$ns/schedules)"
fi
trap 'echo; cleanup; exit 0' INT TERM
while true; do sleep 3600 & wait $!; done
