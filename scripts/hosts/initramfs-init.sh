#!/bin/busybox sh
# /init of the test guest's initramfs (copied there by prepare.sh). Loads the virtio, 9p and
# overlay modules in modules.dep order, mounts the host's root (shared read-only over 9p as
# `hostroot`) with a tmpfs overlay on top, and switch_roots into it to run the stage-2 script
# named on the kernel command line (captrap.stage2=<path in the host root>) as PID 1.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() { echo "guest-init: $*"; echo "host ${host:-unknown}: 0 passed, 1 failed, 0 skipped"; echo o > /proc/sysrq-trigger; sleep 5; exit 1; }
stage2=; host=
for a in $(cat /proc/cmdline); do
  case "$a" in
    captrap.stage2=*) stage2=${a#captrap.stage2=} ;;
    captrap.host=*) host=${a#captrap.host=} ;;
  esac
done
for m in $(cat /modules.order); do insmod "/modules/$m" || fail "insmod $m failed"; done
# cache=loose: the share is read-only and nothing changes it during a run; it makes node start
# several times faster than cache=none.
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288,cache=loose hostroot /lower || fail "cannot mount the host root over 9p"
mount -t tmpfs -o mode=755 tmpfs /rw || fail "cannot mount the overlay's tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot || fail "cannot mount the overlay"
[ -n "$stage2" ] && [ -f "/newroot$stage2" ] || fail "no stage-2 script '$stage2' in the host root"
mount --move /dev /newroot/dev
umount /sys
umount /proc
exec switch_root /newroot /bin/sh "$stage2"
