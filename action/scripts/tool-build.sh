#!/usr/bin/env bash
# Builds kiln's tool as `cargo xtask` would (for the host, none of the kernel's rustflags, the
# tool's own toolchain), into the action's own target directory, and puts the binary where
# the binary cache keeps it. Then removes the tool's own packages from the target directory:
# after a fresh checkout cargo rebuilds them anyway (it compares their sources' mtimes), so the
# dependency cache keeps only what the lock file pins.
set -euo pipefail
[ -z "${TOOL_TOOLCHAIN:-}" ] || export RUSTUP_TOOLCHAIN=$TOOL_TOOLCHAIN
unset CARGO_TARGET_DIR CARGO_BUILD_TARGET CARGO_BUILD_TARGET_DIR RUSTFLAGS CARGO_BUILD_RUSTFLAGS
export CARGO_INCREMENTAL=0 CARGO_ENCODED_RUSTFLAGS=
target=(--target "$TOOL_HOST" --target-dir "$TOOL_TARGET_DIR")
started=$SECONDS
cargo build --manifest-path "$TOOL_MANIFEST" --bin "$TOOL_BIN" "${target[@]}"
echo "kiln's tool built in $((SECONDS - started))s"
mkdir -p "$TOOL_BIN_DIR"
cp "$TOOL_TARGET_DIR/$TOOL_HOST/debug/$TOOL_BIN" "$TOOL_BIN_DIR/$TOOL_BIN.tmp"
mv "$TOOL_BIN_DIR/$TOOL_BIN.tmp" "$TOOL_BIN_DIR/$TOOL_BIN"
read -r -a packages <<<"$TOOL_PACKAGES"
clean=()
for package in "${packages[@]}"; do clean+=(-p "$package"); done
cargo clean --quiet --manifest-path "$TOOL_MANIFEST" "${target[@]}" "${clean[@]}"
