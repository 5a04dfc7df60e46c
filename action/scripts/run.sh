#!/usr/bin/env bash
# Runs the kiln command. kiln itself writes built/cached/junit to GITHUB_OUTPUT and the job
# summary; its exit code is recorded instead of failing this step, so the store is still
# trimmed and saved (a red run warms the cache too) and the action's last step fails.
set -uo pipefail
read -r -a xtask <<<"$KILN_XTASK"
read -r -a command <<<"$KILN_COMMAND"
[ "${#command[@]}" -gt 0 ] || command=(test)
arch_args=()
if [ -n "${KILN_ARCH_LIST:-}" ] && { [ "${command[0]}" = test ] || [ "${command[0]}" = build ]; }; then
    arch_args=(--arch "$KILN_ARCH_LIST")
fi
[ -z "${KILN_STORE_PATH:-}" ] || export KILN_STORE=$KILN_STORE_PATH
"${xtask[@]}" --yes "${command[@]}" "${arch_args[@]}"
status=$?
echo "exit-code=$status" >>"$GITHUB_OUTPUT"
exit 0
