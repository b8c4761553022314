#!/usr/bin/env bash
# Build (or reuse) the cached Debian 12 base image for the test VMs.
#
#   images/build-base.sh               build if needed, print the base folder
#   images/build-base.sh --print-path  print the folder the current inputs map to
#                                      (exit 1 if it has not been built yet)
#   images/build-base.sh --force       rebuild even if the cached base exists
#
# Output, in ${CDP_CACHE:-$HOME/.cache/cdp-appliance}/base-<hash>/ :
#   root.qcow2      root file system (ext4 on the whole disk, no partition table;
#                   read-only: VMs boot from a copy-on-write overlay on top of it)
#   vmlinuz         kernel, booted with -kernel (no boot loader in the image)
#   initrd.img      its initramfs
#   id_ed25519      SSH key for root@VM (public half baked into the image)
#   manifest.json   what went in (hash, suite, packages, kernel version, timings)
#   build.log       mmdebstrap's log
#
# The hash covers this script, the package list and every setting below, so a
# second run with nothing changed only prints the path.  No loop mounts, no
# network access other than the Debian mirror (through apt inside mmdebstrap).
#
# Settings (environment):
#   CDP_CACHE            cache root (default $HOME/.cache/cdp-appliance)
#   CDP_SUITE            Debian suite (default bookworm)
#   CDP_MIRROR           Debian mirror URI (default: mmdebstrap's, deb.debian.org,
#                        plus its -updates and -security suites)
#   CDP_EXTRA_PACKAGES   extra packages, comma separated
#   CDP_IMAGE_SIZE       root file system size for mkfs.ext4 (default 4G)
#   CDP_KEEP_BASES       after a build, keep this many newest base-* folders (default 2)
set -euo pipefail

SCRIPT_PATH="$(readlink -f "${BASH_SOURCE[0]}")"
CACHE_ROOT="${CDP_CACHE:-$HOME/.cache/cdp-appliance}"
SUITE="${CDP_SUITE:-bookworm}"
MIRROR="${CDP_MIRROR:-}"
IMAGE_SIZE="${CDP_IMAGE_SIZE:-4G}"
EXTRA_PACKAGES="${CDP_EXTRA_PACKAGES:-}"

# Guest packages.  No tcmu-runner on purpose: the appliance's own daemon is the
# TCMU handler, and tcmu-runner would race it for the netlink replies.
PACKAGES=(
    linux-image-amd64 kmod systemd-sysv udev dbus
    python3 python3-rtslib-fb targetcli-fb python3-venv python3-pip
    open-iscsi fio sg3-utils iproute2 procps openssh-server e2fsprogs
)
if [ -n "$EXTRA_PACKAGES" ]; then
    IFS=',' read -r -a extra <<<"$EXTRA_PACKAGES"
    PACKAGES+=("${extra[@]}")
fi
PKG_CSV="$(IFS=,; echo "${PACKAGES[*]}")"

# Static guest address on qemu's user network (10.0.2.0/24, host side 10.0.2.2).
# No gateway and no DNS: the guest is reached only through host forwards.
GUEST_ADDR="10.0.2.15/24"

log() { printf '[build-base] %s\n' "$*" >&2; }

cache_key() {
    {
        sha256sum "$SCRIPT_PATH" | cut -d' ' -f1
        printf 'suite=%s\nmirror=%s\nsize=%s\npackages=%s\n' \
            "$SUITE" "$MIRROR" "$IMAGE_SIZE" "$PKG_CSV"
    } | sha256sum | cut -c1-16
}

KEY="$(cache_key)"
BASE_DIR="$CACHE_ROOT/base-$KEY"

is_complete() {
    [ -f "$1/manifest.json" ] && [ -f "$1/root.qcow2" ] && [ -f "$1/vmlinuz" ] \
        && [ -f "$1/initrd.img" ] && [ -f "$1/id_ed25519" ]
}

FORCE=0
case "${1:-}" in
    --print-path)
        echo "$BASE_DIR"
        is_complete "$BASE_DIR"
        exit $?
        ;;
    --force) FORCE=1 ;;
    "") ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$SCRIPT_PATH" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "unknown argument: $1" >&2
        exit 2
        ;;
esac

# Host tools for building and for running the VM tests (iscsi-inq is the host-side
# iSCSI initiator the smoke tests use).  Checked on every run: it is cheap.
ensure_prereqs() {
    local missing=()
    command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
    command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
    command -v qemu-img >/dev/null || missing+=(qemu-utils)
    command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
    command -v ssh >/dev/null || missing+=(openssh-client)
    command -v iscsi-inq >/dev/null || missing+=(libiscsi-bin)
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" != 0 ]; then
            log "missing ${missing[*]} and not root: install them first"
            exit 1
        fi
        log "installing prerequisites: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

ensure_prereqs
if [ "$FORCE" = 0 ] && is_complete "$BASE_DIR"; then
    log "cached, nothing to do"
    echo "$BASE_DIR"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    log "must run as root (mmdebstrap root mode, files owned by root in the image)"
    exit 1
fi

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.build.lock"
flock 9
# Another build may have finished while we waited for the lock.
if [ "$FORCE" = 0 ] && is_complete "$BASE_DIR"; then
    log "built by a concurrent run"
    echo "$BASE_DIR"
    exit 0
fi

WORK="$CACHE_ROOT/.work-$KEY.$$"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
rm -rf "$WORK"
mkdir -p "$WORK/out"
ROOT="$WORK/rootfs"
OUT="$WORK/out"
T0=$(date +%s)

ssh-keygen -q -t ed25519 -N '' -C "cdp-test-vm-$KEY" -f "$OUT/id_ed25519"

# Leave out documentation, man pages and translations: a third of the size.
DPKG_OPTS=(
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-include=/usr/share/locale/locale.alias'
)
MM_ARGS=(--variant=minbase --include="$PKG_CSV" "${DPKG_OPTS[@]}"
    --aptopt='Acquire::Languages "none"' --logfile="$OUT/build.log" "$SUITE" "$ROOT")
[ -n "$MIRROR" ] && MM_ARGS+=("$MIRROR")
log "mmdebstrap $SUITE ($PKG_CSV)"
mmdebstrap "${MM_ARGS[@]}"
T1=$(date +%s)

log "configuring the guest"
echo cdp-testvm >"$ROOT/etc/hostname"
cat >"$ROOT/etc/hosts" <<'EOF'
127.0.0.1 localhost
127.0.1.1 cdp-testvm
EOF
# Root is the whole virtio disk; no fsck pass (the base is never written).
echo '/dev/vda / ext4 rw,errors=remount-ro 0 0' >"$ROOT/etc/fstab"

# Network: systemd-networkd with a static address on the first NIC.
cat >"$ROOT/etc/systemd/network/10-qemu-user.network" <<EOF
[Match]
Name=eth0 en*

[Network]
Address=$GUEST_ADDR
LinkLocalAddressing=no
IPv6AcceptRA=no
EOF

# SSH: root with the generated key only.
install -d -m 700 "$ROOT/root/.ssh"
install -m 600 "$OUT/id_ed25519.pub" "$ROOT/root/.ssh/authorized_keys"
cat >"$ROOT/etc/ssh/sshd_config.d/cdp-testvm.conf" <<'EOF'
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
EOF

# LIO state directories (persistent reservations and ALUA need the last two).
install -d "$ROOT/etc/target" "$ROOT/etc/rtslib-fb-target" \
    "$ROOT/etc/rtslib-fb-target/pr" "$ROOT/etc/rtslib-fb-target/alua" \
    "$ROOT/var/target/pr" "$ROOT/var/target/alua"

# Modules the tests and the appliance need, loaded early (harmless if unused).
cat >"$ROOT/etc/modules-load.d/cdp.conf" <<'EOF'
configfs
target_core_mod
EOF
# Modules udev would load for emulated hardware nobody uses (qemu64 advertises SVM,
# so kvm_amd loads): each costs boot time under TCG.
cat >"$ROOT/etc/modprobe.d/cdp-testvm.conf" <<'EOF'
blacklist kvm
blacklist kvm_amd
blacklist kvm_intel
blacklist cfg80211
blacklist pcspkr
EOF

chroot "$ROOT" systemctl enable systemd-networkd.service ssh.service >/dev/null 2>&1
# Nothing that waits for a network that never comes online, nothing periodic.
for unit in systemd-networkd-wait-online.service apt-daily.timer \
    apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
    open-iscsi.service; do
    ln -sf /dev/null "$ROOT/etc/systemd/system/$unit"
done
# Clean machine identity: systemd creates a fresh one on first boot of each overlay.
: >"$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
rm -rf "$ROOT/var/cache/apt/archives/"*.deb "$ROOT/var/lib/apt/lists/"*_Packages

cp "$(readlink -f "$ROOT/vmlinuz")" "$OUT/vmlinuz"
cp "$(readlink -f "$ROOT/initrd.img")" "$OUT/initrd.img"
KVER="$(basename "$(readlink -f "$ROOT/vmlinuz")" | sed 's/^vmlinuz-//')"

log "mkfs.ext4 -d ($IMAGE_SIZE) and convert to qcow2"
mkfs.ext4 -q -F -L cdproot -d "$ROOT" "$WORK/root.raw" "$IMAGE_SIZE" >/dev/null
qemu-img convert -O qcow2 "$WORK/root.raw" "$OUT/root.qcow2"
rm -f "$WORK/root.raw"
chmod 0444 "$OUT/root.qcow2"
T2=$(date +%s)

cat >"$OUT/manifest.json" <<EOF
{
  "key": "$KEY",
  "suite": "$SUITE",
  "mirror": "${MIRROR:-default}",
  "packages": "$PKG_CSV",
  "kernel": "$KVER",
  "image_size": "$IMAGE_SIZE",
  "guest_addr": "$GUEST_ADDR",
  "built": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "mmdebstrap_seconds": $((T1 - T0)),
  "total_seconds": $((T2 - T0))
}
EOF

rm -rf "$BASE_DIR"
mv "$OUT" "$BASE_DIR"
# Old bases are ~1 GB each; drop all but the newest few (a running VM keeps its
# backing file open, so even a removed one stays readable until it stops).
# shellcheck disable=SC2012  # names are base-<hex>, ls -t is the simple way to sort
ls -1dt "$CACHE_ROOT"/base-* | tail -n +"$((${CDP_KEEP_BASES:-2} + 1))" | xargs -r rm -rf
log "built in $((T2 - T0)) s (mmdebstrap $((T1 - T0)) s): $BASE_DIR"
echo "$BASE_DIR"
