#!/bin/sh
# Prepares what `npm run test:hosts` boots: a Debian kernel and a busybox initramfs, built into
# the cache directory (default <project>/.cache/hosts, gitignored). Nothing binary is committed.
#
#   1. installs qemu-system-x86, busybox-static and kmod with apt-get if they are missing (root);
#   2. fetches linux-image-<version>-amd64 with `apt-get download` (not installed), unpacks it
#      with dpkg-deb, runs depmod on the unpacked tree;
#   3. builds initramfs.cpio.gz: busybox, the virtio / 9p / overlay modules in modules.dep order,
#      and scripts/hosts/initramfs-init.sh as /init.
#
# A second run with a populated cache needs no network: the kernel .deb is reused (set
# CAPTRAP_HOSTS_REFRESH=1 to look for a newer one). Prints `KERNEL=<path>` and `INITRD=<path>`.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
project=$(cd "$here/../.." && pwd)
cache=${CAPTRAP_HOSTS_CACHE:-$project/.cache/hosts}
mkdir -p "$cache/debs"
log() { echo "prepare: $*" >&2; }

# --- 1. host tools -------------------------------------------------------------------------
need=
command -v qemu-system-x86_64 >/dev/null 2>&1 || need="$need qemu-system-x86"
[ -x /bin/busybox ] || need="$need busybox-static"
command -v depmod >/dev/null 2>&1 || [ -x /sbin/depmod ] || need="$need kmod"
if [ -n "$need" ]; then
  if [ "$(id -u)" != 0 ]; then log "missing packages:$need (run as root, or install them)"; exit 2; fi
  log "installing$need"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
fi
PATH=$PATH:/sbin:/usr/sbin
# busybox must be static: it runs from the initramfs before any library is reachable.
if ! file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' && ! ldd /bin/busybox 2>&1 | grep -q 'not a dynamic'; then
  log "/bin/busybox is not statically linked: install busybox-static"; exit 2
fi

# --- 2. the kernel -------------------------------------------------------------------------
deb=$(ls "$cache"/debs/linux-image-*-amd64_*.deb 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$deb" ] || [ "${CAPTRAP_HOSTS_REFRESH:-0}" = 1 ]; then
  pkg=${CAPTRAP_HOSTS_KERNEL_PKG:-$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')}
  if [ -z "$pkg" ]; then
    apt-get update -qq
    pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
  fi
  case "$pkg" in *-cloud-amd64) log "$pkg is the cloud flavour (no 9p): use the generic -amd64 one"; exit 2;; esac
  log "downloading $pkg"
  (cd "$cache/debs" && apt-get download -q "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
  deb=$(ls "$cache"/debs/"$pkg"_*.deb 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$deb" ] || { log "apt-get download $pkg failed"; exit 2; }
fi
kver=$(basename "$deb" | sed -E 's/^linux-image-([^_]+)_.*/\1/')
kroot=$cache/kernel-$kver
if [ ! -f "$kroot/.done" ]; then
  log "unpacking $(basename "$deb")"
  rm -rf "$kroot"
  mkdir -p "$kroot"
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$kroot" --wildcards './boot/vmlinuz-*' './lib/modules/*'
  depmod -b "$kroot" "$kver"
  touch "$kroot/.done"
fi
kernel=$kroot/boot/vmlinuz-$kver
[ -f "$kernel" ] || { log "no kernel image in $deb"; exit 2; }

# --- 3. the initramfs ----------------------------------------------------------------------
# Rebuilt every run (well under a second) so a changed init script is always used.
stage=$cache/initramfs.d
rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/modules" "$stage/proc" "$stage/sys" "$stage/dev" "$stage/lower" "$stage/rw" "$stage/newroot"
cp /bin/busybox "$stage/bin/busybox"
cp "$here/initramfs-init.sh" "$stage/init"
chmod 755 "$stage/init"
: > "$stage/modules.order"
# modprobe --show-depends reads modules.dep of the unpacked tree: one insmod line per module,
# dependencies first. A module built into this kernel prints `builtin ...` and is skipped.
for m in virtio_pci 9pnet_virtio 9p overlay; do
  modprobe -d "$kroot" -S "$kver" --show-depends "$m" | while read -r what path _; do
    [ "$what" = insmod ] || continue
    name=$(basename "$path")
    grep -qx "$name" "$stage/modules.order" && continue
    cp "$path" "$stage/modules/$name"
    echo "$name" >> "$stage/modules.order"
  done
done
initrd=$cache/initramfs.cpio.gz
(cd "$stage" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > "$initrd.tmp")
mv "$initrd.tmp" "$initrd"
log "kernel $kver, initramfs with $(wc -l < "$stage/modules.order") modules: $(tr '\n' ' ' < "$stage/modules.order")"
echo "KERNEL=$kernel"
echo "INITRD=$initrd"
