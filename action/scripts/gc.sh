#!/usr/bin/env bash
# Trims the store to what the command's closures reach, so the saved cache does not grow
# with every change.
set -euo pipefail
read -r -a xtask <<<"$KILN_XTASK"
arch_args=()
[ -z "${KILN_ARCH_LIST:-}" ] || arch_args=(--arch "$KILN_ARCH_LIST")
[ -z "${KILN_STORE_PATH:-}" ] || export KILN_STORE=$KILN_STORE_PATH
"${xtask[@]}" store gc --for "$KILN_GC_FOR" "${arch_args[@]}"
