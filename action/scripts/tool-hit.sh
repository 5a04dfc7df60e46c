#!/usr/bin/env bash
# exact: kiln's binary was restored (nothing compiled); partial: its dependencies were
# restored and only its own packages compiled; miss: compiled from scratch; off: not cached.
set -euo pipefail
if [ "${ENABLED:-}" != true ]; then
    hit=off
elif [ "${BIN_HIT:-}" = true ]; then
    hit=exact
elif [ -n "${DEPS_MATCHED:-}" ]; then
    hit=partial
else
    hit=miss
fi
echo "tool-cache-hit=$hit" >>"$GITHUB_OUTPUT"
echo "kiln's own build: $hit"
