#!/usr/bin/env bash
# Adds the caches to the job summary: for the store and kiln's own build, how each matched,
# whether the store was saved, and the size each takes unpacked on the runner, with a total.
set -euo pipefail
size_of() {
    local bytes=0 path
    while IFS= read -r path; do
        [ -z "$path" ] || [ ! -e "$path" ] || bytes=$((bytes + $(du -sb "$path" | cut -f1)))
    done
    echo "$bytes"
}
human() { awk -v b="$1" 'BEGIN { split("B KiB MiB GiB", u); i = 1; while (b >= 1024 && i < 4) { b /= 1024; i++ } printf (i == 1 ? "%d %s" : "%.1f %s"), b, u[i] }'; }
rows=()
total=0
if [ "${CACHE_ENABLED:-true}" = true ] && [ -n "${STORE:-}" ]; then
    if [ "${LOOKUP_ONLY:-}" = true ]; then
        rows+=("| store | ${STORE_HIT:-miss} (looked up only) | ${STORE_MATCHED:-$STORE_KEY} | – |")
    else
        bytes=$(size_of <<<"$STORE")
        total=$((total + bytes))
        if [ "${SAVED:-}" = true ]; then saved="saved as \`$SAVED_KEY\`"; else saved=${NOT_SAVED:-not saved}; fi
        rows+=("| store | ${STORE_HIT:-miss} | ${STORE_MATCHED:-–}; $saved | $(human "$bytes") |")
    fi
fi
case "${TOOL_HIT:-off}" in
    off) ;;
    *)
        bin=$(size_of <<<"$TOOL_BIN_DIR")
        deps=$(size_of <<<"$TOOL_DEPS_PATHS")
        total=$((total + bin + deps))
        rows+=("| kiln's build | $TOOL_HIT | binary $(human "$bin"), dependencies and registry $(human "$deps") | $(human $((bin + deps))) |")
        ;;
esac
[ "${#rows[@]}" -gt 0 ] || exit 0
{
    echo
    echo "#### kiln's caches"
    echo
    echo "| cache | hit | detail | size |"
    echo "|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
    echo
    echo "Total cache size on this runner: $(human "$total") (unpacked; the saved archives are zstd-compressed)."
} >>"$GITHUB_STEP_SUMMARY"
echo "kiln's caches: $(human "$total")"
