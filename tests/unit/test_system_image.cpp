// System images (src/husk/system_image.h): a bzImage's header read, husk's
// initramfs's release, the image's modules in place of husk's, the kernel
// found inside the rootfs only, the init's power-off signal.
#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include "husk/system_image.h"
#include "sys/sys.h"
#include "tmpdir.h"

using namespace husk;
using namespace husk::system_image;

namespace {

void put16(std::string& b, size_t at, uint16_t v) {
    b[at] = char(v & 0xff);
    b[at + 1] = char(v >> 8);
}

// The first bytes of a bzImage as Linux's x86 boot header lays them out.
std::string bzimage(const std::string& version = "6.1.0-50-amd64 (debian-kernel@lists.debian.org) #1 SMP",
                    uint16_t protocol = 0x20f, bool loaded_high = true, bool kernel64 = true) {
    std::string b(0x4000, '\0');
    put16(b, 0x1fe, 0xaa55);
    b.replace(0x202, 4, "HdrS");
    put16(b, 0x206, protocol);
    b[0x211] = loaded_high ? 0x01 : 0x00;
    put16(b, 0x236, kernel64 ? 0x01 : 0x00);
    put16(b, 0x20e, 0x3000 - 0x200);
    b.replace(0x3000, version.size(), version);
    return b;
}

void put32(std::string& b, size_t at, uint32_t v) {
    for (int i = 0; i < 4; ++i) b[at + size_t(i)] = char(v >> (8 * i));
}
void put64(std::string& b, size_t at, uint64_t v) {
    for (int i = 0; i < 8; ++i) b[at + size_t(i)] = char(v >> (8 * i));
}

// An ELF vmlinux as far as husk reads one: the ELF header, one PT_NOTE
// program header and its notes (a PVH entry note unless `pvh` is false),
// and the banner at `banner_at`.
struct Vmlinux {
    bool pvh = true;
    uint16_t machine = 62, type = 2;
    char elf_class = 2;
    size_t banner_at = 0x1000;
    std::string banner = "Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org) (gcc-12) #1 SMP\n";
};
std::string vmlinux(const Vmlinux& v = {}) {
    std::string b(std::max<size_t>(v.banner_at + v.banner.size(), 0x400), '\0');
    b.replace(0, 4, "\x7f" "ELF");
    b[4] = v.elf_class;
    b[5] = 1;
    put16(b, 16, v.type);
    put16(b, 18, v.machine);
    put64(b, 32, 64);  // e_phoff
    put16(b, 54, 56);
    put16(b, 56, 1);
    put32(b, 64, 4);          // PT_NOTE
    put64(b, 64 + 8, 0x200);  // p_offset
    std::string notes;
    auto note = [&](const std::string& name, uint32_t type, const std::string& desc) {
        std::string n(12, '\0');
        put32(n, 0, uint32_t(name.size() + 1));
        put32(n, 4, uint32_t(desc.size()));
        put32(n, 8, type);
        n += name + '\0';
        n.append((4 - n.size() % 4) % 4, '\0');
        n += desc;
        n.append((4 - n.size() % 4) % 4, '\0');
        notes += n;
    };
    note("GNU", 3, std::string(20, 'x'));                // a build id
    note("Xen", v.pvh ? 18 : 17, std::string(8, '\1'));  // PHYS32_ENTRY (17: another Xen note)
    put64(b, 64 + 32, notes.size());                     // p_filesz
    b.replace(0x200, notes.size(), notes);
    b.replace(v.banner_at, v.banner.size(), v.banner);
    return b;
}

Result<Kernel> parse_vmlinux_bytes(const std::string& bytes) {
    std::string dir = make_tmpdir("vmlinux");
    REQUIRE(sys::write_file(dir + "/vmlinux", bytes));
    auto fd = sys::open(dir + "/vmlinux", O_RDONLY | O_CLOEXEC);
    REQUIRE(fd);
    auto k = parse_vmlinux(fd->get(), bytes.size());
    REQUIRE(sys::remove_all(dir));
    return k;
}

std::string module_with_vermagic(const std::string& vermagic) {
    return std::string("\x7f" "ELF", 4) + std::string(64, '\0') + "license=GPL" + '\0' + "vermagic=" + vermagic + '\0' +
           "name=x" + '\0';
}

Spec spec_with(const std::map<std::string, std::string>& annotations, std::vector<std::string> args = {"/sbin/init"}) {
    Spec s;
    s.annotations = annotations;
    s.process = SpecProcess{};
    s.process->args = std::move(args);
    return s;
}

}  // namespace

TEST_CASE("a bzImage's header gives its version and release", "[system-image]") {
    auto k = parse_bzimage(bzimage());
    REQUIRE(k);
    CHECK(k->release == "6.1.0-50-amd64");
    CHECK(k->version == "6.1.0-50-amd64 (debian-kernel@lists.debian.org) #1 SMP");
}

TEST_CASE("what is not a bootable 64-bit bzImage is refused, saying what it is", "[system-image]") {
    struct Case {
        std::string what, bytes, error;
    } cases[] = {
        {"an ELF file", std::string("\x7f" "ELF", 4) + std::string(0x400, '\0'), "an ELF file, not a bzImage"},
        {"text", std::string(0x1000, 'x'), "not a Linux bzImage"},
        {"too short", bzimage().substr(0, 0x200), "not a Linux bzImage"},
        {"an old protocol", bzimage("6.1.0", 0x20a), "boot protocol 2.10 is older than 2.12"},
        {"a zImage", bzimage("6.1.0", 0x20f, false), "a zImage"},
        {"a 32-bit kernel", bzimage("6.1.0", 0x20f, true, false), "a 32-bit kernel"},
        {"no version string", [] {
             auto b = bzimage();
             put16(b, 0x20e, 0);
             return b;
         }(), "names no kernel version"},
        {"a version past the bytes read", [] {
             auto b = bzimage();
             put16(b, 0x20e, 0x7000);
             return b;
         }(), "not within its setup code"},
        {"an unterminated version", [] {
             auto b = bzimage();
             b.replace(0x3000, 0x1000, std::string(0x1000, 'a'));
             return b;
         }(), "not within its setup code"},
        {"a version that is not text", bzimage("6.1.0\x01junk"), "not text"},
        {"a release that is a path", bzimage("../../etc (x)"), "names no release"},
    };
    for (const auto& c : cases) {
        INFO(c.what);
        auto k = parse_bzimage(c.bytes);
        REQUIRE_FALSE(k);
        CHECK(k.error().message.find(c.error) != std::string::npos);
        CHECK(k.error().code == EINVAL);
    }
}

TEST_CASE("husk's initramfs: its modules, their release, and an archive written after it", "[system-image]") {
    std::string cpio = cpio_newc({{"init", "agent"},
                                  {"lib/", ""},
                                  {"lib/modules/", ""},
                                  {"lib/modules/order", "virtio_pci.ko\n"},
                                  {"lib/modules/uml/", ""},
                                  {"lib/modules/uml/ipv6.ko", module_with_vermagic("6.1.190 mod_unload")},
                                  {"lib/modules/virtio_pci.ko", module_with_vermagic("6.1.0-57-amd64 SMP preempt mod_unload")}});
    auto mods = initramfs_modules(cpio);
    CHECK(mods.size() == 2);  // not init, not the directories, not UML's
    CHECK(mods.at("order") == "virtio_pci.ko\n");
    auto r = initramfs_release(cpio);
    REQUIRE(r);
    CHECK(*r == "6.1.0-57-amd64");
    // No module: no release to tell.
    auto none = initramfs_release(cpio_newc({{"init", "agent"}}));
    REQUIRE_FALSE(none);
    CHECK(none.error().code == ENOENT);
    // A module whose "vermagic=" is not a modinfo string's start is not read as one.
    auto odd = initramfs_release(cpio_newc({{"lib/modules/a.ko", std::string("xvermagic=9.9.9") + '\0'}}));
    CHECK_FALSE(odd);
    // Two archives back to back, as the kernel unpacks an initrd: the
    // first read alone, up to its trailer.
    std::string two = cpio + cpio_newc({{"lib/modules/order", "other\n"}});
    CHECK(initramfs_modules(two).at("order") == "virtio_pci.ko\n");
    CHECK(cpio.size() % 4 == 0);
    // Cut short: what is whole is read.
    CHECK(initramfs_modules(cpio.substr(0, cpio.size() / 2)).size() <= 2);
}

TEST_CASE("husk's order files become the image's modules, dependencies first", "[system-image]") {
    auto image = parse_module_index(
        "kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko "
        "kernel/drivers/virtio/virtio_pci_legacy_dev.ko\n"
        "kernel/drivers/virtio/virtio_pci_modern_dev.ko:\n"
        "kernel/drivers/virtio/virtio_pci_legacy_dev.ko:\n"
        "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko\n"
        "kernel/net/9p/9pnet.ko:\n"
        "kernel/fs/netfs/netfs.ko:\n"
        "kernel/net/9p/9pnet-virtio.ko: kernel/net/9p/9pnet.ko\n"
        "malformed line\n"
        ":\n",
        "kernel/drivers/char/virtio_console.ko\n");
    CHECK(image.modules.count("9pnet_virtio"));  // '-' is '_'
    CHECK(image.modules.at("virtio_pci").first == "kernel/drivers/virtio/virtio_pci.ko");
    CHECK(image.builtin.count("virtio_console"));
    auto r = rewrite_orders({{"order", "virtio_pci.ko\nvirtio_console.ko\n"}, {"order.9p", "9pnet.ko\n9pnet_virtio.ko\n9p.ko\n"}},
                            image, "6.1.0-50-amd64");
    REQUIRE(r);
    CHECK(r->order.at("order") == "virtio_pci_modern_dev.ko\nvirtio_pci_legacy_dev.ko\nvirtio_pci.ko\n");  // built in: dropped
    CHECK(r->order.at("order.9p") == "9pnet.ko\n9pnet_virtio.ko\nnetfs.ko\n9p.ko\n");
    CHECK(r->needed == std::vector<std::string>{"9p", "9pnet", "9pnet_virtio", "netfs", "virtio_pci", "virtio_pci_legacy_dev",
                                                "virtio_pci_modern_dev"});
    // A module the image's kernel neither has nor builds in.
    auto missing = rewrite_orders({{"order", "virtio_balloon.ko\n"}}, image, "6.1.0-50-amd64");
    REQUIRE_FALSE(missing);
    CHECK(missing.error().message ==
          "the image's kernel 6.1.0-50-amd64 has no module virtio_balloon and does not build it in (/lib/modules/6.1.0-50-amd64): "
          "husk's agent needs it");
    // Dependencies that go round (depmod writes none) are an error, not a loop.
    auto loop = parse_module_index("a.ko: b.ko\nb.ko: a.ko\n", "");
    auto l = rewrite_orders({{"order", "a.ko\n"}}, loop, "x");
    REQUIRE_FALSE(l);
    CHECK(l.error().message == "module a: its dependencies go round (/lib/modules/x/modules.dep)");
    // A module two others need is listed once, before both.
    auto shared = parse_module_index("a.ko: c.ko\nb.ko: c.ko\nc.ko:\n", "");
    auto sh = rewrite_orders({{"order", "a.ko\nb.ko\n"}}, shared, "x");
    REQUIRE(sh);
    CHECK(sh->order.at("order") == "c.ko\na.ko\nb.ko\n");
}

TEST_CASE("the annotations: absolute paths, an initrd only with a kernel", "[system-image]") {
    auto none = requested(spec_with({}));
    REQUIRE(none);
    CHECK_FALSE(*none);
    auto k = requested(spec_with({{kAnnotationKernel, "/boot/vmlinuz"}}));
    REQUIRE(k);
    REQUIRE(*k);
    CHECK((*k)->kernel == "/boot/vmlinuz");
    CHECK((*k)->initrd.empty());
    for (const char* bad : {"boot/vmlinuz", "", "vmlinuz"}) {
        INFO(bad);
        auto r = requested(spec_with({{kAnnotationKernel, bad}}));
        REQUIRE_FALSE(r);
        CHECK(r.error().message.find("org.husk.kernel: expected an absolute path inside the rootfs") != std::string::npos);
        auto i = requested(spec_with({{kAnnotationKernel, "/boot/vmlinuz"}, {kAnnotationInitrd, bad}}));
        REQUIRE_FALSE(i);
        CHECK(i.error().message.find("org.husk.initrd: expected an absolute path inside the rootfs") != std::string::npos);
    }
    auto both = requested(spec_with({{kAnnotationKernel, "/boot/vmlinuz"}, {kAnnotationInitrd, "/boot/initrd.img"}}));
    REQUIRE(both);
    REQUIRE(*both);
    CHECK((*both)->initrd == "/boot/initrd.img");
    auto alone = requested(spec_with({{kAnnotationInitrd, "/boot/initrd.img"}}));
    REQUIRE_FALSE(alone);
    CHECK(alone.error().message ==
          "annotation org.husk.initrd: an initrd is booted with the image's kernel (org.husk.kernel), which is not given");
}

TEST_CASE("an ELF vmlinux: x86-64, a PVH entry note, its banner's release", "[system-image]") {
    auto k = parse_vmlinux_bytes(vmlinux());
    REQUIRE(k);
    CHECK(k->elf);
    CHECK(k->release == "6.1.0-57-amd64");
    CHECK(k->version == "6.1.0-57-amd64 (debian-kernel@lists.debian.org) (gcc-12) #1 SMP");
    // A banner across the 4 MiB the file is read in is found whole.
    Vmlinux across;
    across.banner_at = (4 << 20) - 20;
    auto a = parse_vmlinux_bytes(vmlinux(across));
    REQUIRE(a);
    CHECK(a->release == "6.1.0-57-amd64");
    // A release that ends at a NUL, not a space.
    Vmlinux nul;
    nul.banner = std::string("Linux version 6.1.0-57-cloud") + '\0' + "more";
    CHECK(parse_vmlinux_bytes(vmlinux(nul)).value().release == "6.1.0-57-cloud");
    // The format string of another banner ("Linux version %s") is no release.
    Vmlinux fmt;
    fmt.banner = std::string("Linux version %s (%s)\n") + '\0' + "Linux version 6.1.0-9-amd64 (x)\n";
    CHECK(parse_vmlinux_bytes(vmlinux(fmt)).value().release == "6.1.0-9-amd64");
    auto why = [](const Vmlinux& v) {
        auto r = parse_vmlinux_bytes(vmlinux(v));
        REQUIRE_FALSE(r);
        return r.error().message;
    };
    Vmlinux bad;
    bad.pvh = false;
    CHECK(why(bad) == "an ELF kernel without a PVH entry note (CONFIG_PVH): the VMMs boot a vmlinux through it");
    bad = {};
    bad.machine = 183;  // aarch64
    CHECK(why(bad) == "an ELF file for another machine than x86-64");
    bad = {};
    bad.type = 1;  // a relocatable object: a module
    CHECK(why(bad) == "an ELF file, but not an executable (a module or a library?)");
    bad = {};
    bad.elf_class = 1;
    CHECK(why(bad) == "an ELF file, but not 64-bit little-endian");
    bad = {};
    bad.banner = "no banner here";
    CHECK(why(bad) == "an ELF kernel with no \"Linux version\" banner to tell its release by");
    // Program headers past the end of the file.
    std::string cut = vmlinux().substr(0, 80);
    auto c = parse_vmlinux_bytes(cut);
    REQUIRE_FALSE(c);
    CHECK(c.error().message == "its headers point past its end");
}

TEST_CASE("org.husk.stdio: the init's stdio, or the guest's terminal", "[system-image]") {
    CHECK_FALSE(console_stdio(spec_with({})).value());
    CHECK_FALSE(console_stdio(spec_with({{kAnnotationStdio, "init"}})).value());
    CHECK(console_stdio(spec_with({{kAnnotationStdio, "console"}})).value());
    auto bad = console_stdio(spec_with({{kAnnotationStdio, "serial"}}));
    REQUIRE_FALSE(bad);
    CHECK(bad.error().message == "annotation org.husk.stdio: expected \"console\" or \"init\", got \"serial\"");
}

TEST_CASE("an initrd is a newc cpio or a compression the kernel unpacks", "[system-image]") {
    CHECK(initrd_format("070701000000").value_or("") == "a newc cpio");
    CHECK(initrd_format("070702000000").value_or("") == "a newc cpio");
    CHECK(initrd_format(std::string_view("\x1f\x8b\x08\x00", 4)).value_or("") == "gzip");
    CHECK(initrd_format(std::string_view("\x28\xb5\x2f\xfd\x04", 5)).value_or("") == "zstd");
    CHECK(initrd_format(std::string_view("\xfd" "7zXZ\x00\x00", 7)).value_or("") == "xz");
    CHECK(initrd_format(std::string_view("\x02\x21\x4c\x18", 4)).value_or("") == "lz4");
    CHECK(initrd_format(std::string_view("\x5d\x00\x00\x80", 4)).value_or("") == "lzma");
    CHECK(initrd_format("BZh91AY").value_or("") == "bzip2");
    CHECK(initrd_format(std::string_view("\x89LZO\x00", 5)).value_or("") == "lzo");
    auto old = initrd_format("070707000000");
    REQUIRE_FALSE(old);
    CHECK(old.error().message == "an old-format cpio: the kernel unpacks newc (cpio -H newc)");
    for (std::string_view bad : {std::string_view(""), std::string_view("#!/bin/sh"), std::string_view("\x7f" "ELF"),
                                 std::string_view("\x1f", 1), std::string_view("\0\0\0\0", 4)}) {
        auto r = initrd_format(bad);
        REQUIRE_FALSE(r);
        CHECK(r.error().message == "not an initramfs (neither a newc cpio nor a compression the kernel unpacks one from)");
    }
}

TEST_CASE("the kernel is found inside the rootfs, and copied with its modules", "[system-image]") {
    std::string root = make_tmpdir("sysimg");
    std::string rootfs = root + "/rootfs", state = root + "/state";
    REQUIRE(sys::mkdir_p(rootfs + "/boot"));
    REQUIRE(sys::mkdir_p(state));
    std::string outside = root + "/outside-vmlinuz";
    REQUIRE(sys::write_file(outside, bzimage()));
    REQUIRE(sys::write_file(rootfs + "/boot/vmlinuz", bzimage()));
    REQUIRE(::symlink("/boot/vmlinuz", (rootfs + "/vmlinuz").c_str()) == 0);  // absolute: inside the root
    REQUIRE(::symlink(("../.." + outside).c_str(), (rootfs + "/boot/escape").c_str()) == 0);
    REQUIRE(::mkfifo((rootfs + "/boot/fifo").c_str(), 0600) == 0);

    auto k = open_kernel(rootfs, "/vmlinuz");
    REQUIRE(k);
    CHECK(k->kernel.release == "6.1.0-50-amd64");
    CHECK_FALSE(k->kernel.elf);
    // An ELF vmlinux is read as one.
    REQUIRE(sys::write_file(rootfs + "/boot/vmlinux", vmlinux()));
    auto elf = open_kernel(rootfs, "/boot/vmlinux");
    REQUIRE(elf);
    CHECK(elf->kernel.elf);
    CHECK(elf->kernel.release == "6.1.0-57-amd64");
    REQUIRE(sys::write_file(rootfs + "/boot/module.ko", module_with_vermagic("6.1.0-57-amd64 SMP")));
    auto ko = open_kernel(rootfs, "/boot/module.ko");
    REQUIRE_FALSE(ko);
    CHECK(ko.error().message == "org.husk.kernel /boot/module.ko: an ELF file, but not 64-bit little-endian");
    // A symlink out of the rootfs is followed inside it: not found there.
    auto esc = open_kernel(rootfs, "/boot/escape");
    REQUIRE_FALSE(esc);
    CHECK(esc.error().message == "org.husk.kernel /boot/escape: No such file or directory (resolved inside the rootfs)");
    auto fifo = open_kernel(rootfs, "/boot/fifo");
    REQUIRE_FALSE(fifo);
    CHECK(fifo.error().message == "org.husk.kernel /boot/fifo: not a regular file");
    // A kernel is copied into the state dir: one past 1 GiB (sparse here) is refused.
    {
        auto big = sys::open(rootfs + "/boot/big", O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        REQUIRE(big);
        REQUIRE(sys::write_all(big->get(), bzimage()));
        REQUIRE(::ftruncate(big->get(), off_t(kVmlinuxLimit) + 1) == 0);
    }
    auto large = open_kernel(rootfs, "/boot/big");
    REQUIRE_FALSE(large);
    CHECK(large.error().message == "org.husk.kernel /boot/big: larger than 1024 MiB");

    // husk's initramfs with modules for the same release: used as it is.
    std::string initrd = root + "/initramfs.img";
    std::string husks = cpio_newc({{"lib/modules/order", "virtio_pci.ko\n"},
                                   {"lib/modules/virtio_pci.ko", module_with_vermagic("6.1.0-50-amd64 SMP")}});
    REQUIRE(sys::write_file(initrd, husks));
    auto same = prepare_boot(rootfs, Requested{"/vmlinuz", ""}, initrd, state);
    REQUIRE(same);
    CHECK(same->initrd == initrd);
    CHECK(same->kernel == state + "/image-kernel");
    CHECK(sys::read_file(same->kernel).value_or("") == bzimage());
    CHECK(same->why == "Linux 6.1.0-50-amd64, with husk's modules (built for it)");

    // Another release: the image's modules, appended; none in the image: an error, nothing written.
    REQUIRE(sys::write_file(initrd, cpio_newc({{"lib/modules/order", "virtio_pci.ko\n"},
                                                {"lib/modules/virtio_pci.ko", module_with_vermagic("6.1.0-57-amd64 SMP")}})));
    REQUIRE(sys::remove_all(state));
    REQUIRE(sys::mkdir_p(state));
    auto no_mods = prepare_boot(rootfs, Requested{"/vmlinuz", ""}, initrd, state);
    REQUIRE_FALSE(no_mods);
    CHECK(no_mods.error().message.find("org.husk.kernel /vmlinuz is Linux 6.1.0-50-amd64: its modules are not in the image") == 0);
    CHECK(no_mods.error().message.find("husk's initramfs has modules for 6.1.0-57-amd64 only") != std::string::npos);
    CHECK(sys::list_dir(state).value_or(std::vector<std::string>{"?"}).empty());
    std::string mods = rootfs + "/lib/modules/6.1.0-50-amd64";
    REQUIRE(sys::mkdir_p(mods + "/kernel"));
    REQUIRE(sys::write_file(mods + "/modules.dep", "kernel/virtio_pci.ko:\n"));
    REQUIRE(sys::write_file(mods + "/kernel/virtio_pci.ko", module_with_vermagic("6.1.0-50-amd64 SMP")));
    auto other = prepare_boot(rootfs, Requested{"/vmlinuz", ""}, initrd, state);
    REQUIRE(other);
    CHECK(other->initrd == state + "/image-initrd.img");
    CHECK(other->why == "Linux 6.1.0-50-amd64, with the image's modules (1; husk's are for 6.1.0-57-amd64)");
    std::string written = sys::read_file(other->initrd).value_or("");
    std::string husk_part = sys::read_file(initrd).value_or("");
    REQUIRE(written.compare(0, husk_part.size(), husk_part) == 0);
    auto appended = initramfs_modules(std::string_view(written).substr(husk_part.size()));
    CHECK(appended.at("order") == "virtio_pci.ko\n");
    CHECK(appended.at("virtio_pci.ko") == module_with_vermagic("6.1.0-50-amd64 SMP"));
    // The image's initrd: stacked under husk's archive (copied first, then
    // husk's at a 4-byte boundary, then the image's modules).
    std::string image_initrd("\x1f\x8b\x08\x00" "gzip body", 13);  // 13 bytes: 3 of padding follow
    REQUIRE(sys::write_file(rootfs + "/boot/initrd.img", image_initrd));
    REQUIRE(sys::write_file(rootfs + "/boot/initrd.sh", "#!/bin/sh\n"));
    REQUIRE(::symlink(("../.." + outside).c_str(), (rootfs + "/boot/initrd.escape").c_str()) == 0);
    REQUIRE(sys::remove_all(state));
    REQUIRE(sys::mkdir_p(state));
    auto stacked = prepare_boot(rootfs, Requested{"/vmlinuz", "/boot/initrd.img"}, initrd, state);
    REQUIRE(stacked);
    CHECK(stacked->initrd == state + "/image-initrd.img");
    CHECK(stacked->why ==
          "Linux 6.1.0-50-amd64, with the image's modules (1; husk's are for 6.1.0-57-amd64); husk's initramfs stacked on the "
          "image's initrd (gzip, 0 KiB)");
    std::string all = sys::read_file(stacked->initrd).value_or("");
    REQUIRE(all.size() > 16 + husk_part.size());
    CHECK(all.substr(0, 13) == image_initrd);
    CHECK(all.substr(13, 3) == std::string(3, '\0'));
    CHECK(all.compare(16, husk_part.size(), husk_part) == 0);
    CHECK(initramfs_modules(std::string_view(all).substr(16 + husk_part.size())).at("order") == "virtio_pci.ko\n");
    // With husk's modules for the release, the image's initrd alone is stacked.
    REQUIRE(sys::remove_all(state));
    REQUIRE(sys::mkdir_p(state));
    std::string husks_same = sys::read_file(initrd).value_or("");
    REQUIRE(sys::write_file(initrd, husks));
    auto stacked_same = prepare_boot(rootfs, Requested{"/vmlinuz", "/boot/initrd.img"}, initrd, state);
    REQUIRE(stacked_same);
    CHECK(sys::read_file(stacked_same->initrd).value_or("") == image_initrd + std::string(3, '\0') + husks);
    REQUIRE(sys::write_file(initrd, husks_same));
    // Not an initramfs, outside the root, missing: errors, nothing written.
    REQUIRE(sys::remove_all(state));
    REQUIRE(sys::mkdir_p(state));
    auto script = check(rootfs, Requested{"/vmlinuz", "/boot/initrd.sh"}, initrd);
    REQUIRE_FALSE(script);
    CHECK(script.error().message ==
          "org.husk.initrd /boot/initrd.sh: not an initramfs (neither a newc cpio nor a compression the kernel unpacks one from)");
    auto esc_initrd = prepare_boot(rootfs, Requested{"/vmlinuz", "/boot/initrd.escape"}, initrd, state);
    REQUIRE_FALSE(esc_initrd);
    CHECK(esc_initrd.error().message ==
          "org.husk.initrd /boot/initrd.escape: No such file or directory (resolved inside the rootfs)");
    CHECK(sys::list_dir(state).value_or(std::vector<std::string>{"?"}).empty());
    // A compressed module (or anything not an ELF object) is refused.
    REQUIRE(sys::write_file(mods + "/kernel/virtio_pci.ko", std::string("\xfd" "7zXZ", 5) + "xz data"));
    auto xz = check(rootfs, Requested{"/vmlinuz", ""}, initrd);
    REQUIRE_FALSE(xz);
    CHECK(xz.error().message.find("is compressed or not a module") != std::string::npos);
    REQUIRE(sys::remove_all(root));
}

TEST_CASE("SIGTERM becomes the init's power-off: systemd's, busybox init's, or the annotation's", "[system-image]") {
    std::string root = make_tmpdir("sysimg");
    REQUIRE(sys::mkdir_p(root + "/lib/systemd"));
    REQUIRE(sys::mkdir_p(root + "/sbin"));
    REQUIRE(sys::mkdir_p(root + "/bin"));
    REQUIRE(sys::write_file(root + "/lib/systemd/systemd", "elf"));
    REQUIRE(sys::write_file(root + "/bin/busybox", "elf"));
    REQUIRE(::symlink("/lib/systemd/systemd", (root + "/sbin/init").c_str()) == 0);
    REQUIRE(::symlink("../bin/busybox", (root + "/bin/init").c_str()) == 0);
    REQUIRE(::symlink("busybox", (root + "/bin/sh").c_str()) == 0);
    auto sig = [&](std::vector<std::string> args, std::map<std::string, std::string> a = {}) {
        auto r = poweroff_signal(spec_with(a, std::move(args)), root);
        REQUIRE(r);
        return r->value_or(0);
    };
    CHECK(sig({"/sbin/init"}) == SIGRTMIN + 4);
    CHECK(sig({"/lib/systemd/systemd", "--log-level=debug"}) == SIGRTMIN + 4);
    CHECK(sig({"/bin/init"}) == SIGUSR2);
    CHECK(sig({"/bin/sh"}) == 0);     // busybox, but not its init: SIGTERM as it is
    CHECK(sig({"init"}) == 0);        // not a path
    CHECK(sig({"/sbin/none"}) == 0);  // not there (the create says so)
    CHECK(sig({"/bin/sh"}, {{kAnnotationPoweroff, "SIGPWR"}}) == SIGPWR);
    CHECK(sig({"/sbin/init"}, {{kAnnotationPoweroff, "RTMIN+3"}}) == SIGRTMIN + 3);
    auto bad = poweroff_signal(spec_with({{kAnnotationPoweroff, "SIGNOPE"}}), root);
    REQUIRE_FALSE(bad);
    CHECK(bad.error().message.find("annotation org.husk.poweroff-signal: ") == 0);
    REQUIRE(sys::remove_all(root));
}
