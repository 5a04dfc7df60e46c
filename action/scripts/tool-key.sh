#!/usr/bin/env bash
# Keys kiln's own build, so the action restores it before kiln is asked for the store key:
# finds the package `cargo xtask` builds (xtask/tool, which `cargo kiln init` writes and the
# bootstrap in xtask/ builds; else a classic xtask/), follows its path dependencies (cargo
# metadata --no-deps, offline), and hashes `rustc -vV`, the lock files and manifests, and
# every file of those packages. A kernel's sources are no dependency of the tool, so editing
# them never changes this key. Writes to GITHUB_OUTPUT:
#   bin-key, bin-dir       the tool's binary alone: exact or nothing
#   deps-key, deps-restore-key, deps-paths
#                          its target directory without its own packages, and cargo's registry
#                          and git caches: keyed by the toolchain, lock files and manifests
#   xtask                  how later steps start kiln: the binary itself
set -euo pipefail
off() {
    echo "kiln's own build is not cached: $1"
    echo "enabled=false" >>"$GITHUB_OUTPUT"
    exit 0
}
enabled=$(printf '%s' "${KILN_CACHE_TOOL:-true}" | tr '[:upper:]' '[:lower:]')
[ "$enabled" = true ] || off "cache-tool is '${KILN_CACHE_TOOL:-}'"
read -r -a xtask <<<"$KILN_XTASK"
[ "${xtask[*]}" = "cargo xtask" ] || off "the xtask input is '$KILN_XTASK', not 'cargo xtask'"
command -v jq >/dev/null || off "jq is missing on this runner"
root=$(pwd -P)
toolchain=
if [ -f xtask/tool/Cargo.toml ]; then
    manifest=$root/xtask/tool/Cargo.toml
    # The bootstrap builds the tool with the toolchain xtask/tool/rust-toolchain.toml names.
    toolchain=$(sed -n "s/^[[:space:]]*channel[[:space:]]*=[[:space:]]*[\"']\([^\"']*\).*/\1/p" \
        xtask/tool/rust-toolchain.toml 2>/dev/null | head -n1)
    toolchain=${toolchain:-stable}
    export RUSTUP_TOOLCHAIN=$toolchain
elif [ -f xtask/Cargo.toml ]; then
    manifest=$root/xtask/Cargo.toml
else
    off "there is no xtask/Cargo.toml in $root"
fi
rustc_version=$(cd "$(dirname "$manifest")" && rustc -vV 2>&1) || off "rustc -vV failed: $rustc_version"
host=$(sed -n 's/^host: //p' <<<"$rustc_version")
[ -n "$host" ] || off "rustc -vV names no host"

# The tool's package and the packages it builds from (path dependencies, followed across
# workspaces); each workspace's Cargo.toml and Cargo.lock.
declare -A seen=()
queue=("$manifest")
package= bin= packages=() dirs=() files=()
while [ "${#queue[@]}" -gt 0 ]; do
    current=${queue[0]}
    queue=("${queue[@]:1}")
    [ -z "${seen[$current]:-}" ] || continue
    seen[$current]=1
    metadata=$(cargo metadata --no-deps --offline --format-version 1 --manifest-path "$current") ||
        off "cargo metadata failed for $current"
    workspace=$(jq -r .workspace_root <<<"$metadata")
    files+=("$workspace/Cargo.toml" "$workspace/Cargo.lock")
    this=$(jq -c --arg m "$current" '.packages[] | select(.manifest_path == $m)' <<<"$metadata")
    [ -n "$this" ] || off "cargo metadata does not list $current"
    if [ -z "$package" ]; then
        package=$(jq -r .name <<<"$this")
        bin=$(jq -r '[.targets[] | select(.kind | index("bin")) | .name][0] // empty' <<<"$this")
    fi
    packages+=("$(jq -r .name <<<"$this")")
    dirs+=("$(dirname "$current")")
    while IFS= read -r dependency; do
        [ -z "$dependency" ] || queue+=("$(cd "$dependency" && pwd -P)/Cargo.toml")
    done < <(jq -r '.dependencies[] | select(.path != null and .kind != "dev") | .path' <<<"$this" | sort -u)
done
[ -n "$bin" ] || off "the package $package has no binary"

relative() { sed "s|^$root/||"; }
digest() { sha256sum | cut -c1-20; }
listing() {
    for file in "${files[@]}"; do
        [ ! -f "$file" ] || printf '%s\0' "$file"
    done
    find "${dirs[@]}" -name target -prune -o -name .git -prune -o -type f -print0
}
sources=$(listing | sort -zu | xargs -0 sha256sum | relative | digest)
manifests=$(listing | sort -zu | grep -z -E '/Cargo\.(toml|lock)$' | xargs -0 sha256sum | relative | digest)
rustc_hash=$(printf '%s' "$rustc_version" | digest | cut -c1-12)

tool_dir=$root/target/kiln-tool
cargo_home=${CARGO_HOME:-$HOME/.cargo}
prefix="${KILN_CACHE_PREFIX}-tool-${RUNNER_OS:-Linux}-${host}-${rustc_hash}"
{
    echo "enabled=true"
    echo "manifest=$manifest"
    echo "bin=$bin"
    echo "host=$host"
    echo "toolchain=$toolchain"
    echo "packages=${packages[*]}"
    echo "bin-dir=$tool_dir/bin"
    echo "target-dir=$tool_dir/build"
    echo "xtask=$tool_dir/bin/$bin"
    echo "bin-key=${prefix}-${sources}"
    echo "deps-key=${prefix}-deps-${manifests}"
    echo "deps-restore-key=${prefix}-deps-"
    echo "deps-paths<<KILN_PATHS_EOF"
    echo "$tool_dir/build"
    echo "$cargo_home/registry/index"
    echo "$cargo_home/registry/cache"
    echo "$cargo_home/git/db"
    echo "KILN_PATHS_EOF"
} >>"$GITHUB_OUTPUT"
echo "kiln's build: $package ($(printf '%s\n' "${dirs[@]}" | relative | paste -sd' ' -)), key ${prefix}-${sources}"
