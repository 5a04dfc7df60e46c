#!/usr/bin/env bash
# Asks kiln for the cache key of the command (closure hashes of what it needs) and writes the
# key, the restore keys (most to least specific), the store path and the log directory to
# GITHUB_OUTPUT. The prefix holds the runner OS, the arch set and kiln's store format.
set -euo pipefail
read -r -a xtask <<<"$KILN_XTASK"
read -r -a command <<<"$KILN_COMMAND"
arch_list=$(echo "${KILN_ARCHES//,/ }" | xargs -n1 2>/dev/null | sort -u | paste -sd, - || true)
arch_slug=${arch_list//,/-}
arch_slug=${arch_slug:-all}
arch_args=()
[ -z "$arch_list" ] || arch_args=(--arch "$arch_list")
store=${KILN_STORE_PATH:-target/kiln/store}
{
    echo "store=$store"
    echo "logs=target/kiln/logs"
    echo "arch-list=$arch_list"
    echo "arch-slug=$arch_slug"
} >>"$GITHUB_OUTPUT"

# Only `test` and `build` have a key of their own; other commands share the test key.
case "${command[0]:-test}" in
    build) verb=build ;;
    *) verb=test ;;
esac
case "${command[0]:-test}" in
    test | build) echo "gc-for=$verb" >>"$GITHUB_OUTPUT" ;;
esac
if [ "${KILN_CACHE:-true}" != true ]; then
    exit 0
fi
export KILN_STORE=$store
lines=$("${xtask[@]}" -q store key --for "$verb" "${arch_args[@]}")
kiln_key=$(sed -n 's/^key=//p' <<<"$lines")
kiln_prefix=$(sed -n 's/^restore-keys=//p' <<<"$lines")
if [ -z "$kiln_key" ]; then
    echo "::error title=kiln::\`store key\` printed no key"
    exit 1
fi
prefix="${KILN_CACHE_PREFIX}-${RUNNER_OS:-Linux}-${arch_slug}-"
{
    echo "key=${prefix}${kiln_key}"
    echo "restore-keys<<KILN_RESTORE_KEYS"
    echo "${prefix}${kiln_prefix}"
    echo "${prefix}"
    echo "KILN_RESTORE_KEYS"
} >>"$GITHUB_OUTPUT"
echo "cache key: ${prefix}${kiln_key}"
