#!/usr/bin/env bash
# Opens /dev/kvm to the job where the runner has it. GitHub's Linux runners expose the device
# to root and the kvm group only; the well-known udev rule makes it usable by the job's user.
# Whether KVM is then used is kiln's probe's call (a guest that runs slowly under nested KVM
# stays on TCG), and kiln says which in the job summary.
# KILN_KVM_DEVICE and KILN_UDEV_RULES_DIR name other places (the action's tests use them, so
# they need no root).
set -euo pipefail
device=${KILN_KVM_DEVICE:-/dev/kvm}
rules_dir=${KILN_UDEV_RULES_DIR:-/etc/udev/rules.d}
if [ ! -e "$device" ]; then
    echo "no $device on this runner: guests of the runner's own architecture run under TCG (emulation)"
    echo "kvm=absent" >>"$GITHUB_OUTPUT"
    exit 0
fi
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
rule='KERNEL=="kvm", GROUP="kvm", MODE="0666", OPTIONS+="static_node=kvm"'
state=granted
if ! { "${sudo[@]}" mkdir -p "$rules_dir" && printf '%s\n' "$rule" | "${sudo[@]}" tee "$rules_dir/99-kiln-kvm.rules" >/dev/null; }; then
    echo "::warning title=kiln::cannot write the udev rule for $device into $rules_dir (no root?); kiln's probe decides with the access the job has"
    state=present
elif ! command -v udevadm >/dev/null; then
    echo "::warning title=kiln::udevadm is missing, so the udev rule for $device is written but not applied; kiln's probe decides with the access the job has"
    state=present
elif ! { "${sudo[@]}" udevadm control --reload-rules && "${sudo[@]}" udevadm trigger --name-match=kvm; }; then
    echo "::warning title=kiln::udevadm could not apply the rule for $device; kiln's probe decides with the access the job has"
    state=present
fi
echo "kvm=$state" >>"$GITHUB_OUTPUT"
echo "$device: $state"
