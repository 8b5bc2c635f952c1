#!/usr/bin/env bash
# demo.sh: the main job on the embedded default. Starts the local stack
# (Temporal dev server, localhub, worker), a simulated device, reboots it
# through the Reboot workflow and updates its firmware through FirmwareUpdate
# (a device already on the version is skipped). Leaves the stack up until Ctrl-C; with
# DEMO_EXIT=1 stops everything it started and exits with the demo's status.
set -euo pipefail

cd "$(dirname "$0")/.."
STATE=${DMFLOW_STATE_DIR:-.dmflow}
BIN=${DMFLOW_BIN_DIR:-.bin}
DEVICE=${DEMO_DEVICE:-dev-001}
# The tutorial's device takes 20 s to reboot and 15 s per firmware stage; the
# demo keeps that unless told.
REBOOT_DURATION=${DEMO_REBOOT_DURATION:-20s}
STAGE_DURATION=${DEMO_STAGE_DURATION:-15s}
FW_VERSION=${DEMO_FIRMWARE_VERSION:-2.0.0}
stack=scripts/stack.sh

cleanup() { "$stack" down || true; }
if [ "${DEMO_EXIT:-0}" = 1 ]; then trap cleanup EXIT; fi

t0=$(date +%s)
"$stack" up
# shellcheck disable=SC1091
. "$STATE/env"

"$stack" start "simdevice-$DEVICE" "$BIN/simdevice" --device-id "$DEVICE" \
  --reboot-duration "$REBOOT_DURATION" --stage-duration "$STAGE_DURATION"
"$stack" wait-for "simdevice $DEVICE" "$STATE/simdevice-$DEVICE.pid" "$STATE/simdevice-$DEVICE.log" "simdevice ready" 30
echo "simdevice ready  device=$DEVICE reboot-duration=$REBOOT_DURATION stage-duration=$STAGE_DURATION (log: $STATE/simdevice-$DEVICE.log)"
echo
echo "\$ starter reboot --device $DEVICE --wait"
status=0
"$BIN/starter" reboot --device "$DEVICE" --wait || status=$?
echo
uri="https://fw.example/dmflow-$FW_VERSION.bin"
# One update ID per version: a demo run again finds the update it started
# before (running or done) instead of starting a second one.
echo "\$ starter firmware --device $DEVICE --uri $uri --version $FW_VERSION --update-id demo-$FW_VERSION --wait"
"$BIN/starter" firmware --device "$DEVICE" --uri "$uri" --version "$FW_VERSION" --update-id "demo-$FW_VERSION" --wait || status=$?
echo
echo "demo took $(($(date +%s) - t0))s; Temporal UI: $DMFLOW_TEMPORAL_UI"

if [ "${DEMO_EXIT:-0}" = 1 ]; then
  exit "$status"
fi
echo "The stack stays up: try 'source $STATE/env; $BIN/starter reboot --device $DEVICE --wait'. Ctrl-C stops it."
trap 'echo; cleanup; exit 0' INT TERM
while true; do sleep 3600 & wait $!; done
