#!/usr/bin/env bash
# make demo: the main job end to end on the built-in simulated fleet (scenarios/demo.yaml).
#
#   1. start azsim (local ARM + Entra ID over HTTPS, a real Linux sandbox, a WS-Man Windows guest)
#   2. checks only, plan only: what would happen, nothing changes
#   3. checks + actions with --apply: the two copies become generalized images (a managed image and
#      a gallery version); the original domain controller is refused by the gate
#   4. the reports: audit.html for the change board, Allure HTML for engineers, JUnit, verdicts
#   5. stop azsim
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bin="$repo/.venv/bin"
state="$repo/.azsim/demo"
out="$repo/reports/out"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() { "$bin/azsim" down --state-dir "$state" >/dev/null 2>&1 || true; }
trap cleanup EXIT

say "starting azsim with the demo fleet (the Linux root file system is built once, about a minute)"
"$bin/azsim" down --state-dir "$state" >/dev/null 2>&1 || true
rm -rf "$state" "$out"
"$bin/azsim" up --scenario scenarios/demo.yaml --state-dir "$state"
# shellcheck disable=SC1091
. "$state/env"

fleet=(--vm rg-images/lin-web-copy --vm rg-images/win-app-copy --vm rg-images/win-dc01)

say "1/2 plan: checks and a plan of the actions, nothing changes"
set +e
"$bin/pytest" "${fleet[@]}" -p no:cacheprovider -q --change-ticket CHG-DEMO-1 \
  --report-dir="$out/plan" -rs --no-header | tail -n 25
plan_rc=${PIPESTATUS[0]}
set -e

say "2/2 apply: generalize what passed, capture images; the original domain controller stays shut"
set +e
"$bin/pytest" "${fleet[@]}" -p no:cacheprovider -q --change-ticket CHG-DEMO-1 --apply \
  --capture-as "image:{vm}-2026.11" --report-dir="$out" --no-header | tail -n 25
apply_rc=${PIPESTATUS[0]}
set -e

say "what Azure (azsim) says now"
"$bin/azsim" status --state-dir "$state" | "$bin/python" scripts/show_fleet.py

say "reports"
if [ -f reports/node_modules/allure/cli.js ]; then
  bash scripts/report.sh "$out" || echo "(Allure HTML could not be generated; see above)"
fi
echo "  audit for the change board: $out/audit.html"
echo "  JUnit: $out/junit.xml    verdicts: $out/verdicts/"

# The demo succeeds when the harness did what it must: the copies generalized, the original refused.
"$bin/python" - "$state" "$plan_rc" "$apply_rc" <<'EOF'
import json, subprocess, sys
state, plan_rc, apply_rc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
status = json.loads(subprocess.run([".venv/bin/azsim", "status", "--state-dir", state],
                                   capture_output=True, text=True, check=True).stdout)
vms = {v["name"]: v for v in status["vms"]}
ok = (
    plan_rc == 1  # the domain controller's checks are red
    and apply_rc == 1
    and vms["lin-web-copy"]["os_state"] == "generalized"
    and vms["win-app-copy"]["os_state"] == "generalized"
    and vms["win-dc01"]["os_state"] != "generalized"
    and vms["win-dc01"]["power_state"] == "running"
)
print("\ndemo: " + ("as expected: two copies generalized, the original domain controller untouched"
                    if ok else f"UNEXPECTED (plan exit {plan_rc}, apply exit {apply_rc})"))
sys.exit(0 if ok else 1)
EOF
