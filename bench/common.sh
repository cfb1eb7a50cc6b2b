# Sourced by bench scripts (after `cd` to the source tree, with $I set to
# husk's initramfs). What a bare VM needs to be comparable with husk's own.

# BENCH_ACCEL (kvm or tcg, husk's pick on this host), BENCH_VM (the machine
# and accelerator husk uses with it), BENCH_VIRTIO (its virtio transport).
BENCH_ACCEL=$(build/husk features | python3 -c 'import json,sys; print(json.load(sys.stdin)["annotations"]["org.husk.accel"])')
if [ "$BENCH_ACCEL" = kvm ]; then
    BENCH_VM="-M microvm -accel kvm -cpu host"
    BENCH_VIRTIO=device
else
    BENCH_VM="-M q35,sata=off,smbus=off -accel tcg,tb-size=32"
    BENCH_VIRTIO=pci
fi

# BENCH_CMDLINE: the kernel parameters husk gives every guest (read from
# src/husk/defaults.h, the one place they are written), and quiet, so that
# a bare VM boots the same way.
BENCH_CMDLINE=$(sed -n 's/.*kKernelCmdline = "\(.*\)";.*/\1/p' src/husk/defaults.h)
[ -n "$BENCH_CMDLINE" ] || { echo "bench: no kKernelCmdline in src/husk/defaults.h" >&2; exit 1; }
export BENCH_CMDLINE="$BENCH_CMDLINE quiet console=ttyS0"

# bench_initramfs DIR IMG: husk's initramfs (its kernel modules) with
# busybox added and the script on stdin as /init, unpacked in DIR and
# packed into IMG.
bench_initramfs() {
    mkdir -p "$1"
    (cd "$1" && cpio -id --quiet < "$I" && rm init && mkdir -p bin && cp /bin/busybox bin/ && cat > init &&
        chmod +x init && find . | sort | cpio -o -H newc --quiet) > "$2"
}
