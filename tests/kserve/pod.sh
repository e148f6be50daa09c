#!/bin/bash
# A KServe pod of TorchServe's KServe image, on this machine: run inside `unshare --mount --net
# --pid --fork --mount-proc` (private mounts, loopback and processes, all ended with this script).
#   pod.sh LAYOUT KEY_DIR HOME COMMAND WRAPPER...
# The storage initializer's copy is LAYOUT, mounted read-only at /mnt/models; the Secret's key
# folder is KEY_DIR at /mnt/mar-trust; then the image's entrypoint runs (`set -e; eval "$@"`, then
# KServe's wrapper, for which WRAPPER... stands in) with COMMAND, the InferenceService's args.
set -e
mount --make-rprivate /
ip link set lo up
mount -t tmpfs pod-mounts /mnt
mkdir -p /mnt/models /mnt/mar-trust
mount --bind "$1" /mnt/models
mount -o remount,bind,ro /mnt/models
mount --bind "$2" /mnt/mar-trust
cd "$3"
shift 3
command="$1"
shift
# TorchServe's KServe image entrypoint (kubernetes/kserve/dockerd-entrypoint.sh): set -e, eval its
# arguments, then start KServe's wrapper in front of TorchServe.
eval "$command"
exec "$@"
