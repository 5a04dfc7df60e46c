#!/usr/bin/env bash
# Asks kiln for the command's cache key (closure hashes of what it needs, kiln's key and store
# format versions, the host arch) and where its store and logs are, then writes to
# GITHUB_OUTPUT: the key (prefixed with the cache prefix, runner OS and the arch set or the
# shared key), the restore key, the key a failed run saves under (one per branch), the store
# and log paths (absolute, so the cache and upload steps find them whatever the working
# directory), and whether this command may save.
set -euo pipefail
read -r -a xtask <<<"$KILN_XTASK"
read -r -a command <<<"$KILN_COMMAND"
[ "${#command[@]}" -gt 0 ] || command=(test)
fail() { echo "::error title=kiln::$1"; exit 2; }

case "${command[0]}" in
    -*) fail "the command input starts with the kiln command (test, build, ...); put global options such as -v in the xtask input" ;;
esac
case "$KILN_CACHE_PREFIX" in
    *,*) fail "cache-prefix '$KILN_CACHE_PREFIX' contains a comma, which cache keys cannot" ;;
esac
case "${KILN_SHARED_KEY:-}" in
    *[!A-Za-z0-9._-]*) fail "shared-key '$KILN_SHARED_KEY' may hold only letters, digits, '.', '_' and '-'" ;;
esac
arches=$(printf '%s' "$KILN_ARCHES" | tr ',\n\t' '   ' | xargs -n1 2>/dev/null | sort -u | paste -sd, - || true)
for arch in ${arches//,/ }; do
    case "$arch" in
        x86_64 | aarch64 | riscv64) ;;
        *) fail "unknown architecture '$arch' in the arch input (x86_64, aarch64, riscv64)" ;;
    esac
done
arch_slug=${arches//,/-}
arch_slug=${arch_slug:-all}
arch_args=()
[ -z "$arches" ] || arch_args=(--arch "$arches")

# Only a plain `test` or `build` may save: a narrower command (`test smoke`) needs less than
# the key promises, and saving its store under that key would leave the next full run an
# exact hit that still has to build.
verb=test
may_save=false
case "${command[*]}" in
    test) may_save=true ;;
    build) verb=build; may_save=true ;;
    build\ *) verb=build ;;
esac
[ -z "${KILN_STORE_PATH:-}" ] || export KILN_STORE=$KILN_STORE_PATH
lines=$("${xtask[@]}" -q store key --for "$verb" "${arch_args[@]}")
value() { sed -n "s/^$1=//p" <<<"$lines"; }
kiln_key=$(value key)
kiln_prefix=$(value restore-keys)
[ -n "$kiln_key" ] || fail "\`store key\` printed no key"
# A shared key groups several jobs (a matrix): their keys differ by kiln's key (the closures
# of each job's arch set) but share the restore prefix, so each starts from the group's newest.
prefix="${KILN_CACHE_PREFIX}-${RUNNER_OS:-Linux}-${KILN_SHARED_KEY:-$arch_slug}-"
key="${prefix}${kiln_key}"
branch=${GITHUB_HEAD_REF:-${GITHUB_REF_NAME:-local}}
branch_slug=$(printf '%s' "$branch" | tr -c 'A-Za-z0-9._-' '-')
token="${GITHUB_RUN_ID:-local}-${GITHUB_RUN_ATTEMPT:-1}-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
{
    echo "key=$key"
    echo "restore-keys=${prefix}${kiln_prefix}"
    # A failed run's store is incomplete: saved apart, it is only ever a partial hit; one
    # entry per branch, so red runs do not pile up.
    echo "incomplete-key=${key}-incomplete-${branch_slug}"
    echo "store=$(value store)"
    echo "logs=$(value logs)"
    echo "arch-list=$arches"
    echo "arch-slug=$arch_slug"
    echo "logs-name=kiln-logs-${GITHUB_JOB:-job}-${arch_slug}-${token}"
    echo "verb=$verb"
    echo "save=$may_save"
} >>"$GITHUB_OUTPUT"
echo "cache key: $key"
