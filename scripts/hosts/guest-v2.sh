#!/bin/sh
# Stage 2 of the `v2` test guest, PID 1 after switch_root (see initramfs-init.sh): a pure cgroup
# v2 host without systemd (the kernel runs with cgroup_no_v1=all, so no v1 hierarchy can be
# mounted at all). Mounts what a minimal init would, runs the conformance script once, then
# powers the guest off. The root is the host's root, read-only over 9p, under a tmpfs overlay.
. "$(dirname "$0")/guest-base.sh"
hostname captrap-v2
echo "guest: $(uname -r), cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.controllers), nproc $(nproc), $(cat /proc/uptime | cut -d' ' -f1)s since boot"
cd "$project"
# PID 1 reaps what is orphaned to it (a killed sandbox's setsid grandchildren): `wait` on the
# conformance process reaps every child of this shell on the way.
node test/hosts/conformance.mjs --host "${CAPTRAP_HOST_NAME:-v2}" &
wait $!
echo "guest: done after $(cut -d' ' -f1 /proc/uptime)s"
sync
echo o > /proc/sysrq-trigger
sleep 10
