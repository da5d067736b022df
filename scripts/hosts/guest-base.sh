# Sourced by each guest's stage 2 (PID 1 after switch_root): what a minimal init mounts, the
# same on every test host. Sets `project` (the checkout, seen through the host root over 9p).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8
project=$(cd "$(dirname "$0")/../.." && pwd)
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t cgroup2 cgroup2 /sys/fs/cgroup
# A fresh /tmp and /run, unless the project itself lives there (CI clones anywhere): the overlay
# keeps them writable either way.
case "$project/" in /tmp/*) ;; *) mount -t tmpfs -o mode=1777 tmpfs /tmp ;; esac
case "$project/" in /run/*) ;; *) mount -t tmpfs -o mode=755 tmpfs /run ;; esac
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
command -v ip >/dev/null && ip link set lo up
