#!/usr/bin/env bash
# Decides whether and under which key the store is saved. A green run saves under the key; a
# red run under its branch's incomplete key (one per branch and key, not one per run). GitHub
# caches are immutable: when that entry exists (this run restored it) it is not saved again,
# and a save another job got to first is refused by the cache service, which only warns.
set -euo pipefail
say() {
    echo "save=$1" >>"$GITHUB_OUTPUT"
    [ -z "${2:-}" ] || echo "key=$2" >>"$GITHUB_OUTPUT"
    [ -z "${3:-}" ] || echo "reason=$3" >>"$GITHUB_OUTPUT"
    echo "store: ${3:-saved under $2}"
}
save_if=$(printf '%s' "${SAVE_IF:-}" | tr '[:upper:]' '[:lower:]')
if [ "$save_if" != true ]; then
    say false "" "not saved: save-if is '${SAVE_IF:-}' (by default only pushes to the default branch save; other runs restore)"
elif [ "${MAY_SAVE:-}" != true ]; then
    say false "" "not saved: only a plain \`test\` or \`build\` saves (a narrower command needs less than its key promises)"
elif [ "${EXIT_CODE:-}" = 0 ]; then
    if [ "${HIT:-}" = exact ]; then
        say false "" "not saved: the store under this key was restored whole"
    else
        say true "$KEY"
    fi
elif [ -n "${MATCHED:-}" ] && [ "$(printf '%s' "$MATCHED" | tr '[:upper:]' '[:lower:]')" = "$(printf '%s' "$INCOMPLETE_KEY" | tr '[:upper:]' '[:lower:]')" ]; then
    say false "" "not saved: this branch's incomplete store for these inputs exists (it was restored; cache entries cannot be replaced)"
else
    say true "$INCOMPLETE_KEY"
fi
