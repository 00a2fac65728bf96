#!/bin/sh
# A Docker engine inside a container, for the three-node Swarm lab (harness/swarm.py). Runs
# without --privileged (the build machines refuse it): the lab gives it every capability but
# CAP_SYS_RESOURCE, with seccomp and AppArmor off. Arguments go to dockerd.
set -eu
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  # cgroup v2: move this shell out of the root group, then hand every controller to children.
  mount -o remount,rw /sys/fs/cgroup
  mkdir -p /sys/fs/cgroup/init
  xargs -rn1 </sys/fs/cgroup/cgroup.procs >/sys/fs/cgroup/init/cgroup.procs 2>/dev/null || :
  sed -e 's/ / +/g' -e 's/^/+/' </sys/fs/cgroup/cgroup.controllers >/sys/fs/cgroup/cgroup.subtree_control
else
  # cgroup v1: Docker mounts this container's part of each hierarchy read-only, as bind mounts.
  awk '$3 == "cgroup" { print $2 }' /proc/self/mounts | while read -r mount_point; do
    mount -o remount,bind,rw "$mount_point"
  done
fi
# Inner containers' network setup writes per-namespace sysctls (IPv6 off on each veth).
export DOCKER_ALLOW_IPV6_ON_IPV4_INTERFACE=1
# A node restarted after a kill keeps its pid files, and dockerd refuses to start over them.
rm -f /var/run/docker.pid /var/run/docker/containerd/containerd.pid
exec dockerd "$@"
