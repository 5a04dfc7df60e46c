#!/usr/bin/env bash
# exact: the restored store has everything; partial: an older or incomplete store was
# restored (only what changed is built); miss: nothing was restored.
set -euo pipefail
enabled=$(printf '%s' "${CACHE_ENABLED:-true}" | tr '[:upper:]' '[:lower:]')
if [ "$enabled" != true ]; then
    hit=miss
elif [ "${EXACT:-}" = true ]; then
    hit=exact
elif [ -n "${MATCHED:-}" ]; then
    hit=partial
else
    hit=miss
fi
echo "cache-hit=$hit" >>"$GITHUB_OUTPUT"
echo "cache: $hit${MATCHED:+ ($MATCHED)}"
