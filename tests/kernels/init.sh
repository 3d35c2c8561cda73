#!/bin/busybox sh
# PID 1 of the test guest (packed into the initramfs by run_kernels.py; /config is written beside it).
# Loads the virtio + 9p modules, mounts the Debian userland read-only and the run's scratch directory
# read-write at $SCRATCH inside it, chroots into that and runs $SCRATCH/guest.sh, then powers off.
# Every line goes to the serial console, which the host keeps as console.log.
/bin/busybox mkdir -p /bin /sbin /proc /sys /dev /newroot
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
. /config

say() { echo "httptrace-guest: $*"; }
finish() {
    sync
    say "powering off"
    poweroff -f
    sleep 10
}

say "kernel $(uname -r), $(nproc) cpus, $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"
for m in $MODULES; do
    insmod "/modules/$m.ko" || { say "FAILED: insmod $m"; finish; }
done

mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 userland /newroot \
    || { say "FAILED: mount the userland over 9p"; finish; }
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm 2>/dev/null
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
# The userland is read-only: a tmpfs over each directory its programs write to.
for d in $TMPFS; do
    [ -d "/newroot$d" ] && mount -t tmpfs tmpfs "/newroot$d"
done
mount -t tracefs tracefs /newroot/sys/kernel/tracing
mount -t debugfs debugfs /newroot/sys/kernel/debug 2>/dev/null
mount -t bpf bpf /newroot/sys/fs/bpf
# The scratch directory's mount point was made when the userland was built.
mount -t 9p -o trans=virtio,version=9p2000.L,rw,msize=262144 scratch "/newroot$SCRATCH" \
    || { say "FAILED: mount scratch over 9p at $SCRATCH"; finish; }
ip link set lo up
say "mounted the userland; running $SCRATCH/guest.sh (timeout ${TIMEOUT}s)"

timeout "$TIMEOUT" chroot /newroot /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp LANG=C.UTF-8 TERM=dumb /bin/sh "$SCRATCH/guest.sh"
rc=$?
echo "$rc" > "/newroot$SCRATCH/exit_code"
dmesg > "/newroot$SCRATCH/dmesg.log"
say "guest.sh exited with $rc"
umount "/newroot$SCRATCH"
finish
