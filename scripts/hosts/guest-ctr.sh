#!/bin/sh
# Stage 2 of the `ctr` test guest, PID 1 after switch_root (see initramfs-init.sh): a
# container-style delegated cgroup v2 subtree, the way Docker and Kubernetes present cgroups.
# Same kernel and base setup as `v2` (cgroup_no_v1=all, a shell as PID 1), then:
#   - a cgroup /ctr with +memory +pids +cpu enabled for it at the real root;
#   - a child shell moves itself into /ctr and `unshare --cgroup --mount`s: its cgroup namespace
#     is rooted at /ctr, and cgroup2 is remounted so /sys/fs/cgroup shows /ctr as its root;
#   - it execs the conformance there, so captrap starts IN the namespace root, alone (as a
#     container's only process would), and must move itself into a leaf before it can enable
#     controllers for its sandboxes ("no internal processes").
# PID 1 stays in the real root and reaps orphans, then powers the guest off.
. "$(dirname "$0")/guest-base.sh"
hostname captrap-ctr
mkdir /sys/fs/cgroup/ctr
echo '+memory +pids +cpu' > /sys/fs/cgroup/cgroup.subtree_control
echo "guest: $(uname -r), cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.controllers), delegated to /ctr: $(cat /sys/fs/cgroup/ctr/cgroup.controllers), nproc $(nproc), $(cut -d' ' -f1 /proc/uptime)s since boot"
cd "$project"
# The child shell joins /ctr itself ($$ of `sh -c` is its own pid), then execs unshare, which
# execs the inner shell, which execs node: one process in /ctr throughout.
sh -c '
  echo $$ > /sys/fs/cgroup/ctr/cgroup.procs || exit 1
  exec unshare --cgroup --mount sh -c "
    mount --make-rprivate / && umount /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup || exit 1
    echo \"guest: in the container: /proc/self/cgroup \$(cat /proc/self/cgroup), controllers \$(cat /sys/fs/cgroup/cgroup.controllers)\"
    exec node test/hosts/conformance.mjs --host ctr
  "
' &
wait $!
rc=$?
[ $rc -eq 0 ] || [ $rc -eq 1 ] || echo "guest: the container shell failed (exit $rc)"
echo "guest: done after $(cut -d' ' -f1 /proc/uptime)s"
sync
echo o > /proc/sysrq-trigger
sleep 10
