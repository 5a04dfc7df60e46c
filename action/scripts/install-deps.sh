#!/usr/bin/env bash
# Installs QEMU for the selected architectures (all three when none are named), with apt.
set -euo pipefail
read -r -a arches <<<"$(printf '%s' "$KILN_ARCHES" | tr ',\n\t' '   ')"
[ "${#arches[@]}" -gt 0 ] || arches=(x86_64 aarch64 riscv64)
packages=(qemu-utils)
for arch in "${arches[@]}"; do
    case "$arch" in
        x86_64) packages+=(qemu-system-x86) ;;
        aarch64) packages+=(qemu-system-arm) ;;
        riscv64) packages+=(qemu-system-misc) ;;
        *) echo "::error title=kiln::unknown architecture '$arch' in the action's arch input (x86_64, aarch64, riscv64)"; exit 2 ;;
    esac
done
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "QEMU for ${arches[*]} is installed"
    exit 0
fi
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
