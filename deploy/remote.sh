#!/bin/sh
# edgekit on-device deploy step: the one place where a device's release logic lives.
#
# Shipped and run by deploy/playbook.yml (`python -m deploy`, `make deploy`) for one host or
# a fleet; it can also be run by hand on a device.
#
#   sh remote.sh deploy STAGE [--python python3] [--keep 3] [--health-timeout 60]
#                             [--wheelhouse DIR] [--no-service]
#   sh remote.sh rollback     [--health-timeout 60] [--no-service]
#   sh remote.sh status
#
# STAGE is an uploaded bundle, a folder or a .tar (relative: under ~/edgekit/incoming):
# release/ (model/, profile.yaml, bundle.sha256), the edgekit wheel, bundle.env
# (RELEASE_ID, BUNDLE_SHA256, VENV_KEY, WHEEL, MODEL_NAME). --wheelhouse: a folder or .tar
# of wheels (relative: under ~/edgekit) for pip --no-index, used only to make a new venv.
#
# Layout under $HOME/edgekit:
#   venvs/KEY/            one venv per edgekit wheel content (+ Python version), '.complete'
#                         written last; a venv without it is half-made and rebuilt
#   releases/ID/          model/, profile.yaml, venv -> ../../venvs/KEY; built in
#                         releases/.tmp-ID and renamed only after the self-test passed
#   current -> releases/ID    switched atomically (new symlink, then rename over the old)
#   venv -> current/venv      so ~/edgekit/venv is always the active release's venv
#   .deploy.lock          flock(1) for the whole run: a second deploy is refused
#   logs/                 one log per run
#
# Every step that changes what is active is one rename, so a run killed at any instant
# leaves `current` on the old release or the new one. Output goes to the run's log, not to
# the SSH channel, and SIGHUP/SIGPIPE are ignored: a deploy whose desktop side is killed
# finishes (or switches back) on its own, then releases the lock.
#
# Exit status: 0 deployed / unchanged / rolled back; 1 failed (current left on, or
# switched back to, the old release); 2 usage; 3 refused (another deploy holds the lock).
# The last line on stdout is `EDGEKIT-RESULT {json}` for the summary.
set -u
umask 022
trap '' HUP PIPE

EK="$HOME/edgekit"
ACTION="${1:-}"
[ $# -gt 0 ] && shift
STAGE=""
PYTHON=python3
KEEP=3
HEALTH_TIMEOUT=60
WHEELHOUSE=""
NO_SERVICE=""
case "$ACTION" in
  deploy) STAGE="${1:-}"; [ $# -gt 0 ] && shift ;;  # relative: under ~/edgekit/incoming
  rollback|status) ;;
  *) echo "usage: remote.sh deploy STAGE [options] | rollback | status" >&2; exit 2 ;;
esac
while [ $# -gt 0 ]; do
  case "$1" in
    --python) PYTHON="$2"; shift 2 ;;
    --keep) KEEP="$2"; shift 2 ;;
    --health-timeout) HEALTH_TIMEOUT="$2"; shift 2 ;;
    --wheelhouse) WHEELHOUSE="$2"; shift 2 ;;
    --no-service) NO_SERVICE=1; shift ;;
    *) echo "remote.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
case "$KEEP" in ''|*[!0-9]*|0) echo "remote.sh: --keep must be a positive integer" >&2; exit 2 ;; esac

T0=$(date +%s)
RELEASE=""; PREVIOUS=""; SERVICE="none"

json_str() {  # a JSON string from $1 (backslashes, quotes, control characters escaped)
  printf '"%s"' "$(printf '%s' "$1" | tr '\n\t\r' '   ' | sed 's/\\/\\\\/g; s/"/\\"/g')"
}

result() {  # result WORD EXIT REASON: the summary line, then exit
  secs=$(( $(date +%s) - T0 ))
  line="EDGEKIT-RESULT {\"action\": \"$ACTION\", \"result\": \"$1\", \"release\": $(json_str "$RELEASE"), \"previous\": $(json_str "$PREVIOUS"), \"service\": \"$SERVICE\", \"seconds\": $secs, \"reason\": $(json_str "$3")}"
  echo "$line"  # into the log once it is open (then the log goes to the caller)
  if [ -n "${OUT_FD_OPEN:-}" ]; then cat "$LOG" >&3 2>/dev/null; fi
  exit "$2"
}

say() { echo "edgekit: $*"; }

mkdir -p "$EK/releases" "$EK/venvs" "$EK/logs" || { echo "cannot create $EK" >&2; exit 1; }
LOG="$EK/logs/$(date -u +%Y%m%dT%H%M%SZ)-$ACTION-$$.log"
exec 3>&1 >>"$LOG" 2>&1
OUT_FD_OPEN=1

command -v flock >/dev/null 2>&1 || result failed 1 "flock(1) is not installed on the device (util-linux)"
exec 9>>"$EK/.deploy.lock"
if ! flock -n 9; then
  holder=$(cat "$EK/.deploy.owner" 2>/dev/null)
  result refused 3 "another deploy is running on this device (${holder:-unknown}); try again when it ends"
fi
echo "pid $$ since $(date -u +%Y-%m-%dT%H:%M:%SZ) ($ACTION)" >"$EK/.deploy.owner"
# Leftovers of a run killed mid-way: never active, safe to remove under the lock.
rm -rf "$EK"/releases/.tmp-* "$EK"/.current.tmp "$EK"/.venv.tmp
for v in "$EK"/venvs/*; do
  [ -d "$v" ] && [ ! -f "$v/.complete" ] && rm -rf "$v"
done
# Uploads of deploys killed before they took the lock (a running one's is minutes old).
[ -d "$EK/incoming" ] && find "$EK/incoming" -mindepth 1 -maxdepth 1 -mmin +1440 -exec rm -rf {} +

current_id() { r=$(readlink "$EK/current" 2>/dev/null) && basename "$r"; }

switch_to() {  # switch_to ID: `current` -> releases/ID in one rename
  ln -sfn "releases/$1" "$EK/.current.tmp" && mv -T "$EK/.current.tmp" "$EK/current" || return 1
  if [ ! -e "$EK/venv" ] || [ -L "$EK/venv" ]; then
    ln -sfn current/venv "$EK/.venv.tmp" && mv -T "$EK/.venv.tmp" "$EK/venv"
  fi
}

have_systemd() { [ -z "$NO_SERVICE" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

# Installs or updates the unit (rendered by the package, pointing at ~/edgekit/current),
# restarts the service and waits for /healthz to report fresh frames. 0 healthy.
start_service() {
  SERVICE=systemd
  rel="$EK/releases/$1"
  real=$(cd "$rel" && pwd -P)
  unit="$rel/edgekit.service"
  (cd "$EK/current" && ./venv/bin/python -m edge_runtime unit --config "$EK/current/profile.yaml" \
      --user "$(id -un)" --python "$EK/venv/bin/python" --workdir "$EK/current") >"$unit.tmp" \
    || { WHY="the unit could not be rendered"; return 1; }
  sed "s#$real#$EK/current#g" "$unit.tmp" >"$unit" && rm -f "$unit.tmp"
  if ! cmp -s "$unit" /etc/systemd/system/edgekit.service; then
    as_root install -m 644 "$unit" /etc/systemd/system/edgekit.service \
      && as_root systemctl daemon-reload && as_root systemctl enable edgekit.service \
      || { WHY="cannot install the unit (needs root or passwordless sudo)"; return 1; }
  fi
  as_root systemctl restart edgekit.service || { WHY="systemctl restart edgekit failed"; return 1; }
  "$EK/current/venv/bin/python" - "$EK/current/profile.yaml" "$HEALTH_TIMEOUT" <<'EOF' || { WHY=$(tail -n 1 "$LOG"); return 1; }
import json, os, sys, time, urllib.request
from edge_runtime.config import load_config
cfg = load_config(sys.argv[1])
deadline = time.monotonic() + float(sys.argv[2])
if not cfg.http.enabled:
    time.sleep(min(10.0, float(sys.argv[2])))
    ok = os.system("systemctl is-active --quiet edgekit.service") == 0
    print("http is off: the service is " + ("active" if ok else "not active"))
    sys.exit(0 if ok else 1)
host = cfg.http.host if cfg.http.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
url = f"http://{host}:{cfg.http.port}/healthz"
last = "no answer"
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            doc = json.loads(r.read())
            if doc.get("status") == "ok" and doc.get("frames_total", 0) > 0:
                print(f"healthz ok: {doc.get('frames_total')} frames, model {doc.get('model')}")
                sys.exit(0)
            last = f"status {doc.get('status')}"
    except Exception as e:  # not up yet, 503 while starting
        last = str(e)
    time.sleep(1)
print(f"/healthz did not report fresh frames within {sys.argv[2]} s ({last})")
sys.exit(1)
EOF
}

no_service_note() {
  [ -n "$NO_SERVICE" ] && { echo "service left alone (--no-service); start the daemon with: cd $EK/current && $EK/venv/bin/python -m edge_runtime run --config profile.yaml"; return; }
  echo "no service manager (systemd) found; start the daemon with: cd $EK/current && $EK/venv/bin/python -m edge_runtime run --config profile.yaml"
}

prune() {  # keep the newest $KEEP releases (never the current one) and the venvs they use
  cur=$(current_id)
  n=0
  for r in $(ls -1 "$EK/releases" | sort -r); do
    n=$((n + 1))
    [ "$n" -le "$KEEP" ] || [ "$r" = "$cur" ] || rm -rf "$EK/releases/$r"
  done
  for v in "$EK"/venvs/*; do
    [ -d "$v" ] || continue
    k=$(basename "$v"); used=""
    for r in "$EK"/releases/*; do
      [ "$(readlink "$r/venv" 2>/dev/null)" = "../../venvs/$k" ] && used=1
    done
    [ -n "$used" ] || rm -rf "$v"
  done
}

if [ "$ACTION" = status ]; then
  RELEASE=$(current_id)
  result status 0 "releases: $(ls -1 "$EK/releases" | tr '\n' ' ')"
fi

if [ "$ACTION" = rollback ]; then
  cur=$(current_id)
  [ -n "$cur" ] || result failed 1 "nothing deployed on this device"
  prev=$(ls -1 "$EK/releases" | sort | awk -v c="$cur" '$0 < c' | tail -n 1)
  [ -n "$prev" ] || { RELEASE=$cur; result failed 1 "no release older than $cur to roll back to"; }
  PREVIOUS=$cur; RELEASE=$prev
  switch_to "$prev" || result failed 1 "could not switch current to $prev"
  say "current -> $prev (was $cur)"
  if have_systemd; then
    if ! start_service "$prev"; then
      switch_to "$cur"; start_service "$cur"
      RELEASE=$cur; result failed 1 "$prev did not come up ($WHY); back on $cur"
    fi
    result rolled-back 0 "service restarted on $prev"
  fi
  result rolled-back 0 "$(no_service_note)"
fi

# ---- deploy ----
case "$STAGE" in /*) ;; ?*) STAGE="$EK/incoming/$STAGE" ;; esac
case "$WHEELHOUSE" in /*|'') ;; *) WHEELHOUSE="$EK/$WHEELHOUSE" ;; esac
case "$STAGE" in
  *.tar)
    [ -f "$STAGE" ] || result failed 2 "no bundle at '$STAGE'"
    mkdir -p "${STAGE%.tar}" && tar -xf "$STAGE" -C "${STAGE%.tar}" \
      || result failed 1 "could not unpack the bundle $STAGE"
    rm -f "$STAGE"; STAGE="${STAGE%.tar}" ;;
esac
[ -n "$STAGE" ] && [ -f "$STAGE/bundle.env" ] || result failed 2 "no bundle at '$STAGE'"
. "$STAGE/bundle.env"
RELEASE=$RELEASE_ID
SYSTEM_SITE="${SYSTEM_SITE:-}"
# The AI Camera's package needs Raspberry Pi OS's imx500-package: say so before a venv is built.
if [ "${MODEL_NAME##*.}" = zip ] && ! command -v imx500-package >/dev/null 2>&1; then
  result failed 1 "model/$MODEL_NAME is an IMX500 package: sudo apt install imx500-tools (imx500-package makes network.rpk)"
fi
PREVIOUS=$(current_id)
say "deploy $RELEASE_ID (previous: ${PREVIOUS:-none})"

if [ -n "$PREVIOUS" ] && [ "$(cat "$EK/current/bundle.sha256" 2>/dev/null)" = "$BUNDLE_SHA256" ] \
    && [ -f "$EK/current/venv/.complete" ]; then
  RELEASE=$PREVIOUS
  rm -rf "$STAGE"
  result unchanged 0 "the same model, profile and edgekit are already current"
fi

PYV=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
  || result failed 1 "no Python '$PYTHON' on the device"
VKEY="$VENV_KEY-py$PYV"
VENV_ARGS=""
# picamera2 and libcamera's bindings exist only as apt packages (python3-picamera2): a venv
# for a picamera2/imx500 source sees the system's packages, and pip keeps the system's numpy
# (apt's picamera2 and simplejpeg are built against it; a pip numpy 2 beside them breaks them).
[ -n "$SYSTEM_SITE" ] && VKEY="$VKEY-sys" && VENV_ARGS="--system-site-packages"
V="$EK/venvs/$VKEY"
if [ ! -f "$V/.complete" ]; then
  say "creating the venv $V${VENV_ARGS:+ ($VENV_ARGS)}"
  rm -rf "$V"
  "$PYTHON" -m venv $VENV_ARGS "$V" || result failed 1 "'$PYTHON -m venv' failed (Debian: apt install python3-venv)"
  if [ -n "$WHEELHOUSE" ]; then
    case "$WHEELHOUSE" in
      *.tar) mkdir -p "$V/.wheels" && tar -xf "$WHEELHOUSE" -C "$V/.wheels" \
               || result failed 1 "could not unpack the wheelhouse $WHEELHOUSE"
             WHEELHOUSE="$V/.wheels" ;;
    esac
    set -- --no-index --find-links "$WHEELHOUSE"
  else
    set --
  fi
  if [ -n "$SYSTEM_SITE" ] && NPV=$("$V/bin/python" -c 'import numpy; print(numpy.__version__)' 2>/dev/null); then
    echo "numpy==$NPV" >"$V/.constraints" && set -- "$@" --constraint "$V/.constraints"
  fi
  "$V/bin/python" -m pip install --disable-pip-version-check -q "$@" "$STAGE/$WHEEL[device]" \
    || result failed 1 "pip could not install edgekit[device] (see $LOG)"
  rm -rf "$V/.wheels"
  touch "$V/.complete"
fi

# The same id as the current release (same content, same second, its venv half-made):
# never rebuild the active folder in place.
[ "$RELEASE_ID" = "$PREVIOUS" ] && RELEASE_ID="$RELEASE_ID-$$" && RELEASE=$RELEASE_ID
T="$EK/releases/.tmp-$RELEASE_ID"
rm -rf "$T" "$EK/releases/$RELEASE_ID"
mkdir -p "$T" && cp -R "$STAGE/release/." "$T/" && ln -s "../../venvs/$VKEY" "$T/venv" \
  || result failed 1 "could not write the release"
# The profile names the model under ~/edgekit/current (stable across releases, reloads).
sed -i "s#@EDGEKIT_CURRENT@#$EK/current#g" "$T/profile.yaml"
# The AI Camera's package (convert's packerOut.zip): the .rpk is made here, by Raspberry Pi
# OS's imx500-package (apt install imx500-tools), beside the manifest it needs.
if [ "${MODEL_NAME##*.}" = zip ]; then
  imx500-package -i "$T/model/$MODEL_NAME" -o "$T/model" >>"$LOG" 2>&1 && [ -f "$T/model/network.rpk" ] \
    || { rm -rf "$T"; result failed 1 "imx500-package failed on model/$MODEL_NAME (see $LOG)"; }
  MODEL_NAME=network.rpk
fi
(cd "$T" && ./venv/bin/python -m edge_runtime unit --config profile.yaml >/dev/null) \
  || { rm -rf "$T"; result failed 1 "the profile does not load on the device: $(tail -n 1 "$LOG")"; }
say "self-test of model/$MODEL_NAME"
(cd "$T" && ./venv/bin/python -m edge_runtime selftest --model "model/$MODEL_NAME" --json \
   >selftest.json 2>selftest.txt)
st=$?
cat "$T/selftest.txt"
if [ "$st" -ne 0 ]; then
  why=$(grep -v '^selftest FAILED' "$T/selftest.txt" | head -n 3 | tr '\n' ';')
  rm -rf "$T"
  result failed 1 "self-test failed, current left on ${PREVIOUS:-nothing}: ${why:-status $st}"
fi
mv -T "$T" "$EK/releases/$RELEASE_ID" || result failed 1 "could not rename the release"
switch_to "$RELEASE_ID" || result failed 1 "could not switch current"
say "current -> $RELEASE_ID"
if have_systemd; then
  if ! start_service "$RELEASE_ID"; then
    if [ -n "$PREVIOUS" ]; then
      switch_to "$PREVIOUS"; start_service "$PREVIOUS"
    fi
    rm -rf "$EK/releases/$RELEASE_ID"
    result failed 1 "the service did not come up on $RELEASE_ID ($WHY); switched back to ${PREVIOUS:-nothing}"
  fi
  prune; rm -rf "$STAGE"
  result deployed 0 "$(tail -n 1 "$T/../$RELEASE_ID/selftest.txt" 2>/dev/null); service restarted, healthz ok"
fi
prune; rm -rf "$STAGE"
result deployed 0 "$(tail -n 1 "$EK/releases/$RELEASE_ID/selftest.txt"); $(no_service_note)"
