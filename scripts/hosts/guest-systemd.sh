#!/bin/sh
# Stage 2 of the `systemd` test guest: cgroup v2 with systemd (the host's own, 252) as PID 1.
# Same kernel and overlay root as `v2` (cgroup_no_v1=all). Run three times:
#   - as PID 1 after switch_root (see initramfs-init.sh), with no argument: it writes the unit
#     captrap-hosts.service into the overlay's /etc/systemd/system and execs /lib/systemd/systemd.
#     The kernel command line carries systemd.unit=captrap-hosts.service, so systemd starts that
#     unit (DefaultDependencies=no: nothing else, no getty, no networking, no udev, no journald
#     storage) instead of default.target; it mounts /proc, /sys, /sys/fs/cgroup, /run, /dev/shm
#     itself.
#   - as that unit's ExecStart, with the argument `service`: it first starts the second unit,
#     captrap-delegated.service (Delegate=yes, argument `delegated`: test/hosts/systemd.mjs, the
#     systemd-run backend and a delegated cgroup seen without a cgroup namespace), waits for it,
#     then goes on with the conformance. The unit has Delegate=yes, so its
#     cgroup (/system.slice/captrap-hosts.service) is delegated to it with memory, pids and cpu.
#     captrap creates its cgroups below the cgroup2 root it sees, so (as on `ctr`) the shell enters
#     a cgroup namespace rooted at the service's cgroup and remounts cgroup2 there; it then execs
#     the conformance, which starts alone in that delegated cgroup and must move itself into a
#     leaf before enabling controllers for its sandboxes.
# The unit's ExecStopPost powers the guest off through systemd (a clean shutdown): what
# `systemctl poweroff` does, without its first attempt through logind over D-Bus (no D-Bus runs
# here: it printed "Failed to connect to bus").
project=$(cd "$(dirname "$0")/../.." && pwd)
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
if [ "${1:-}" = delegated ]; then
  # captrap-delegated.service: Delegate=yes, no cgroup namespace; node is the only process of
  # the unit's cgroup (exec), as a service's main process is.
  cd "$project" || exit 2
  exec node test/hosts/systemd.mjs
fi
if [ "${1:-}" = service ]; then
  cd "$project" || exit 2
  # First the checks that need the real cgroup tree (systemd-run scopes, a delegated cgroup seen
  # from outside), in a unit of their own; start blocks until that oneshot has finished.
  # Its output goes to a file, copied to the console here: two units writing to ttyS0 in turn
  # lost lines (NUL bytes on the console).
  systemctl start captrap-delegated.service || echo "guest: captrap-delegated.service failed: $(systemctl status --no-pager captrap-delegated.service 2>&1 | tail -n 5)"
  cat /run/captrap-delegated.log
  echo "guest: systemd $(systemctl --version | head -n 1 | cut -d' ' -f2) is PID 1 ($(cat /proc/1/comm)); service in $(cut -d: -f3 /proc/self/cgroup), delegated controllers: $(cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/cgroup.controllers); $(cut -d' ' -f1 /proc/uptime)s since boot"
  exec unshare --cgroup --mount sh -c '
    mount --make-rprivate / && umount /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup || exit 2
    echo "guest: in the service cgroup namespace: /proc/self/cgroup $(cat /proc/self/cgroup), controllers $(cat /sys/fs/cgroup/cgroup.controllers)"
    exec node test/hosts/conformance.mjs --host systemd
  '
fi
# PID 1 (a shell, for now): the unit goes into the overlay, then systemd replaces this shell.
mkdir -p /etc/systemd/system
cat > /etc/systemd/system/captrap-hosts.service <<UNIT
[Unit]
Description=captrap host conformance in a delegated cgroup
DefaultDependencies=no

[Service]
Type=oneshot
Delegate=yes
ExecStart=/bin/sh $project/scripts/hosts/guest-systemd.sh service
ExecStopPost=/bin/sh -c 'echo "guest: done after \$\$(cut -d" " -f1 /proc/uptime)s"; exec systemctl --no-block --job-mode=replace-irreversibly start poweroff.target'
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
TimeoutStartSec=infinity
UNIT
cat > /etc/systemd/system/captrap-delegated.service <<UNIT
[Unit]
Description=captrap in a delegated cgroup without a cgroup namespace, and the systemd-run backend
DefaultDependencies=no

[Service]
Type=oneshot
Delegate=yes
ExecStart=/bin/sh $project/scripts/hosts/guest-systemd.sh delegated
StandardOutput=append:/run/captrap-delegated.log
StandardError=append:/run/captrap-delegated.log
TimeoutStartSec=infinity
UNIT
# The host root may be a container's (this one has /.dockerenv): systemd would then detect
# "virtualization docker", run in container mode and ignore the kernel command line (so
# systemd.unit= too). Remove the markers from the overlay, and pass the unit as an argument too.
rm -f /.dockerenv /run/.containerenv
echo "guest: $(uname -r), starting systemd as PID 1"
exec /lib/systemd/systemd --unit=captrap-hosts.service --show-status=0
