#include "husk/system_image.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <functional>

#include "husk/signals.h"
#include "sys/sys.h"

namespace husk::system_image {

namespace {

uint32_t le(std::string_view b, size_t off, size_t n) {
    uint32_t v = 0;
    for (size_t i = 0; i < n; ++i) v |= uint32_t(uint8_t(b[off + i])) << (8 * i);
    return v;
}

std::string what(const std::string& path) { return std::string(kAnnotationKernel) + " " + path; }

// The first word of a string.
std::string first_word(std::string_view s) {
    size_t e = s.find_first_of(" \t\n");
    return std::string(s.substr(0, e));
}

constexpr size_t kModuleLimit = 64 << 20;  // the largest .ko Debian ships is ~15 MiB
constexpr size_t kModulesLimit = 256 << 20;  // all of them (Debian 6.1's 28 the agent needs: ~3 MiB)

// A regular file inside the rootfs, opened for reading. O_NONBLOCK: a
// FIFO the image put there must not hold the open.
Result<sys::Fd> open_regular(int root, const std::string& rel, int flags = 0) {
    auto fd = sys::open_in_root(root, rel, flags | O_RDONLY | O_NONBLOCK | O_NOCTTY);
    if (!fd) return fail(rel + ": " + std::strerror(fd.error().code) + " (resolved inside the rootfs)", fd.error().code);
    struct stat st;
    if (::fstat(fd->get(), &st) < 0) return fail_errno("stat " + rel);
    if (!S_ISREG(st.st_mode)) return fail(rel + ": not a regular file", EINVAL);
    return std::move(*fd);
}

// Such a file, read whole.
Result<std::string> read_in_root(int root, const std::string& rel, size_t limit) {
    auto fd = TRY(open_regular(root, rel, O_NOFOLLOW));
    return sys::read_to_eof(fd.get(), limit);
}

// The release the modules (initramfs_modules) were built for.
Result<std::string> release_of(const std::map<std::string, std::string_view>& modules) {
    for (const auto& [name, data] : modules) {
        if (name.size() < 4 || name.substr(name.size() - 3) != ".ko") continue;
        constexpr std::string_view key = "vermagic=";
        for (size_t at = data.find(key); at != std::string_view::npos; at = data.find(key, at + 1)) {
            if (at > 0 && data[at - 1] != '\0') continue;  // a modinfo string starts after a NUL
            size_t end = data.find('\0', at);
            std::string release = first_word(data.substr(at + key.size(), end - at - key.size()));
            if (!release.empty()) return release;
        }
    }
    return fail("husk's initramfs has no kernel module to tell its kernel release by", ENOENT);
}

}  // namespace

Result<Kernel> parse_bzimage(std::string_view h) {
    if (h.size() >= 4 && h.substr(0, 4) == "\x7f" "ELF")
        return fail("an ELF file, not a bzImage (a vmlinux kernel is not booted from an image: its vmlinuz is)", EINVAL);
    if (h.size() < 0x240 || h.substr(0x202, 4) != "HdrS" || le(h, 0x1fe, 2) != 0xaa55)
        return fail("not a Linux bzImage (no x86 boot header)", EINVAL);
    uint32_t protocol = le(h, 0x206, 2);
    if (protocol < 0x20c)
        return fail("boot protocol " + std::to_string(protocol >> 8) + "." + std::to_string(protocol & 0xff) +
                        " is older than 2.12 (Linux 3.8)",
                    EINVAL);
    if (!(le(h, 0x211, 1) & 0x01)) return fail("a zImage, not a bzImage", EINVAL);
    if (!(le(h, 0x236, 2) & 0x01)) return fail("a 32-bit kernel (its header has no 64-bit entry)", EINVAL);
    uint32_t at = le(h, 0x20e, 2);
    if (at == 0) return fail("its header names no kernel version", EINVAL);
    at += 0x200;
    size_t end = at < h.size() ? h.find('\0', at) : std::string_view::npos;
    if (end == std::string_view::npos || end == at) return fail("its kernel version string is not within its setup code", EINVAL);
    Kernel k;
    k.version = std::string(h.substr(at, end - at));
    for (char c : k.version)
        if (uint8_t(c) < 0x20 || uint8_t(c) > 0x7e) return fail("its kernel version string is not text", EINVAL);
    k.release = first_word(k.version);
    if (k.release.empty() || k.release.find('/') != std::string::npos || k.release[0] == '.')
        return fail("its kernel version \"" + k.version + "\" names no release", EINVAL);
    return k;
}

Result<Kernel> parse_vmlinux(int fd, uint64_t size) {
    auto read_at = [&](uint64_t off, size_t n) -> Result<std::string> {
        if (off > size || n > size - off) return fail("its headers point past its end", EINVAL);
        std::string b(n, '\0');
        ssize_t r = ::pread(fd, b.data(), n, off_t(off));
        if (r < 0) return fail_errno("read");
        if (size_t(r) != n) return fail("its headers point past its end", EINVAL);
        return b;
    };
    auto le64 = [](std::string_view b, size_t off) { return uint64_t(le(b, off, 4)) | uint64_t(le(b, off + 4, 4)) << 32; };
    if (size > kVmlinuxLimit) return fail("an ELF file larger than " + std::to_string(kVmlinuxLimit >> 20) + " MiB", EFBIG);
    std::string eh = TRY(read_at(0, 64));
    if (eh.substr(0, 4) != "\x7f" "ELF") return fail("not an ELF file", EINVAL);
    if (eh[4] != 2 || eh[5] != 1) return fail("an ELF file, but not 64-bit little-endian", EINVAL);
    if (le(eh, 18, 2) != 62) return fail("an ELF file for another machine than x86-64", EINVAL);
    if (le(eh, 16, 2) != 2) return fail("an ELF file, but not an executable (a module or a library?)", EINVAL);
    uint64_t phoff = le64(eh, 32);
    uint32_t phentsize = le(eh, 54, 2), phnum = le(eh, 56, 2);
    if (phentsize != 56 || phnum == 0 || phnum > 64) return fail("an ELF file whose program headers husk cannot read", EINVAL);
    std::string ph = TRY(read_at(phoff, size_t(phnum) * 56));
    bool pvh = false;
    for (uint32_t i = 0; i < phnum && !pvh; ++i) {
        std::string_view p = std::string_view(ph).substr(size_t(i) * 56, 56);
        if (le(p, 0, 4) != 4) continue;  // PT_NOTE
        uint64_t off = le64(p, 8), filesz = le64(p, 32);
        if (filesz > (1 << 20)) continue;
        std::string notes = TRY(read_at(off, size_t(filesz)));
        for (size_t at = 0; at + 12 <= notes.size();) {
            uint32_t namesz = le(notes, at, 4), descsz = le(notes, at + 4, 4), type = le(notes, at + 8, 4);
            size_t name_at = at + 12, desc_at = name_at + ((size_t(namesz) + 3) & ~size_t(3));
            size_t next = desc_at + ((size_t(descsz) + 3) & ~size_t(3));
            if (namesz > notes.size() || descsz > notes.size() || next > notes.size()) break;
            // XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit entry PVH boots.
            if (type == 18 && namesz == 4 && notes.compare(name_at, 4, std::string("Xen\0", 4)) == 0 && descsz >= 4) pvh = true;
            at = next;
        }
    }
    if (!pvh)
        return fail("an ELF kernel without a PVH entry note (CONFIG_PVH): the VMMs boot a vmlinux through it", EINVAL);
    // The banner (init/version.c): "Linux version <release> (<builder>) ...".
    constexpr std::string_view banner = "Linux version ";
    constexpr size_t kChunk = 4 << 20;
    std::string buf;
    for (uint64_t off = 0; off < size;) {
        size_t n = size_t(std::min<uint64_t>(kChunk, size - off));
        std::string chunk = TRY(read_at(off, n));
        // (The last bytes of the chunk before, so that no banner is cut.)
        buf = buf.substr(buf.size() > 256 ? buf.size() - 256 : 0) + chunk;
        for (size_t at = buf.find(banner); at != std::string::npos; at = buf.find(banner, at + 1)) {
            size_t from = at + banner.size(), end = buf.find_first_of(std::string_view(" \n\0", 3), from);
            if (end == std::string::npos || end == from || end - from > 64 || !std::isdigit(uint8_t(buf[from]))) continue;
            Kernel k;
            k.release = buf.substr(from, end - from);
            size_t line = buf.find_first_of(std::string_view("\n\0", 2), from);
            k.version = buf.substr(from, std::min<size_t>(line == std::string::npos ? buf.size() : line, from + 256) - from);
            bool text = std::all_of(k.release.begin(), k.release.end(), [](char c) { return uint8_t(c) > 0x20 && uint8_t(c) < 0x7f; });
            if (!text || k.release.find('/') != std::string::npos) continue;
            k.elf = true;
            return k;
        }
        off += n;
    }
    return fail("an ELF kernel with no \"Linux version\" banner to tell its release by", EINVAL);
}

namespace {

// Each entry of a newc cpio: name and data. Stops at the trailer or at
// anything malformed (the archive is husk's own).
void each_cpio_entry(std::string_view c, const std::function<void(std::string_view, uint32_t, std::string_view)>& f) {
    size_t pos = 0;
    auto hex = [&](size_t off) -> std::optional<uint32_t> {
        uint32_t v = 0;
        for (size_t i = 0; i < 8; ++i) {
            char ch = c[off + i];
            int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
            if (d < 0) return std::nullopt;
            v = v << 4 | uint32_t(d);
        }
        return v;
    };
    while (pos + 110 <= c.size() && c.substr(pos, 6) == "070701") {
        auto mode = hex(pos + 6 + 8), filesize = hex(pos + 6 + 6 * 8), namesize = hex(pos + 6 + 11 * 8);
        if (!mode || !filesize || !namesize || *namesize == 0) return;
        size_t name_at = pos + 110, data_at = (name_at + *namesize + 3) & ~size_t(3);
        if (data_at > c.size() || *filesize > c.size() - data_at) return;
        std::string_view name = c.substr(name_at, *namesize - 1);
        if (name == "TRAILER!!!") return;
        f(name, *mode, c.substr(data_at, *filesize));
        pos = (data_at + *filesize + 3) & ~size_t(3);
    }
}

}  // namespace

std::map<std::string, std::string_view> initramfs_modules(std::string_view cpio) {
    std::map<std::string, std::string_view> out;
    each_cpio_entry(cpio, [&](std::string_view name, uint32_t mode, std::string_view data) {
        constexpr std::string_view dir = "lib/modules/";
        if (!S_ISREG(mode) || name.substr(0, dir.size()) != dir) return;
        std::string_view rest = name.substr(dir.size());
        if (rest.empty() || rest.find('/') != std::string_view::npos) return;
        out[std::string(rest)] = data;
    });
    return out;
}

Result<std::string> initramfs_release(std::string_view cpio) { return release_of(initramfs_modules(cpio)); }

std::string cpio_newc(const std::vector<std::pair<std::string, std::string>>& files) {
    std::string out;
    uint32_t ino = 0x4000;  // clear of the numbers in husk's own archive, which this may follow
    auto add = [&](const std::string& name, uint32_t mode, const std::string& data) {
        char hdr[111];
        std::snprintf(hdr, sizeof hdr, "070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08zx%08x", ino++, mode, 0u,
                      0u, (mode & S_IFDIR) ? 2u : 1u, 0u, uint32_t(data.size()), 0u, 0u, 0u, 0u, name.size() + 1, 0u);
        out.append(hdr, 110);
        out += name;
        out += '\0';
        out.append((4 - out.size() % 4) % 4, '\0');
        out += data;
        out.append((4 - out.size() % 4) % 4, '\0');
    };
    for (const auto& [name, data] : files) {
        bool dir = !name.empty() && name.back() == '/';
        add(dir ? name.substr(0, name.size() - 1) : name, dir ? (S_IFDIR | 0755) : (S_IFREG | 0644), dir ? "" : data);
    }
    add("TRAILER!!!", 0, "");
    return out;
}

std::string module_name(std::string_view file) {
    std::string n(sys::basename(std::string(file)));
    if (size_t ko = n.find(".ko"); ko != std::string::npos) n.resize(ko);
    for (char& ch : n)
        if (ch == '-') ch = '_';
    return n;
}

ImageModules parse_module_index(const std::string& dep, const std::string& builtin) {
    ImageModules m;
    for (const auto& line : sys::lines(dep)) {
        size_t colon = line.find(':');
        if (colon == std::string::npos || colon == 0) continue;
        std::string path = line.substr(0, colon);
        std::vector<std::string> deps;
        for (size_t p = colon + 1; p < line.size();) {
            size_t q = line.find(' ', p);
            if (q == std::string::npos) q = line.size();
            if (q > p) deps.push_back(module_name(line.substr(p, q - p)));
            p = q + 1;
        }
        m.modules[module_name(path)] = {path, deps};
    }
    for (const auto& line : sys::lines(builtin)) m.builtin.insert(module_name(line));
    return m;
}

Result<Rewritten> rewrite_orders(const std::map<std::string, std::string>& order, const ImageModules& image,
                                 const std::string& release) {
    Rewritten out;
    std::set<std::string> needed;
    for (const auto& [file, text] : order) {
        std::string lines;
        std::set<std::string> listed;
        // Dependencies first (modules.dep lists each module's whole closure),
        // every module once per file; the agent takes a module loaded
        // already (EEXIST) as loaded.
        std::set<std::string> visiting;
        std::function<Result<void>(const std::string&)> add = [&](const std::string& name) -> Result<void> {
            if (listed.count(name) || image.builtin.count(name)) return {};
            auto it = image.modules.find(name);
            if (it == image.modules.end())
                return fail("the image's kernel " + release + " has no module " + name + " and does not build it in (/lib/modules/" +
                                release + "): husk's agent needs it",
                            ENOENT);
            if (!visiting.insert(name).second)
                return fail("module " + name + ": its dependencies go round (/lib/modules/" + release + "/modules.dep)", ELOOP);
            for (const auto& d : it->second.second) TRY(add(d));
            visiting.erase(name);
            listed.insert(name);
            lines += name + ".ko\n";
            needed.insert(name);
            return {};
        };
        for (const auto& line : sys::lines(text)) TRY(add(module_name(line)));
        out.order[file] = lines;
    }
    out.needed.assign(needed.begin(), needed.end());
    return out;
}

namespace {

Result<std::string> annotation_path(const Spec& spec, const char* key) {
    const std::string& p = spec.annotations.at(key);
    if (!sys::is_absolute(p) || p.find('\0') != std::string::npos || p.size() > 4096)
        return fail(std::string("annotation ") + key + ": expected an absolute path inside the rootfs, got \"" + p + "\"", EINVAL);
    return p;
}

}  // namespace

Result<std::optional<Requested>> requested(const Spec& spec) {
    bool initrd = spec.annotations.count(kAnnotationInitrd);
    if (!spec.annotations.count(kAnnotationKernel)) {
        if (initrd)
            return fail(std::string("annotation ") + kAnnotationInitrd + ": an initrd is booted with the image's kernel (" +
                            kAnnotationKernel + "), which is not given",
                        EINVAL);
        return std::optional<Requested>();
    }
    Requested r{TRY(annotation_path(spec, kAnnotationKernel)), ""};
    if (initrd) r.initrd = TRY(annotation_path(spec, kAnnotationInitrd));
    return std::optional<Requested>(std::move(r));
}

Result<bool> console_stdio(const Spec& spec) {
    auto it = spec.annotations.find(kAnnotationStdio);
    if (it == spec.annotations.end() || it->second == "init") return false;
    if (it->second == "console") return true;
    return fail(std::string("annotation ") + kAnnotationStdio + ": expected \"console\" or \"init\", got \"" + it->second + "\"",
                EINVAL);
}

Result<std::string> initrd_format(std::string_view h) {
    // init/initramfs.c: a newc archive at a 4-byte boundary, else
    // lib/decompress.c's magics.
    static const std::pair<std::string_view, const char*> kMagic[] = {
        {std::string_view("070701"), "a newc cpio"},
        {std::string_view("070702"), "a newc cpio"},
        {std::string_view("\x1f\x8b", 2), "gzip"},
        {std::string_view("\x1f\x9e", 2), "gzip"},
        {std::string_view("BZh"), "bzip2"},
        {std::string_view("\x5d\x00\x00", 3), "lzma"},
        {std::string_view("\xfd" "7zXZ\x00", 6), "xz"},
        {std::string_view("\x89LZO", 4), "lzo"},
        {std::string_view("\x02\x21\x4c\x18", 4), "lz4"},
        {std::string_view("\x28\xb5\x2f\xfd", 4), "zstd"},
    };
    for (const auto& [magic, name] : kMagic)
        if (h.substr(0, magic.size()) == magic) return std::string(name);
    if (h.substr(0, 6) == "070707") return fail("an old-format cpio: the kernel unpacks newc (cpio -H newc)", EINVAL);
    return fail("not an initramfs (neither a newc cpio nor a compression the kernel unpacks one from)", EINVAL);
}

namespace {

// A file an annotation (`key`) names, opened inside the rootfs
// (open_regular), at most `limit` bytes, and its first `head` bytes read;
// errors name the annotation and the path.
struct ImageFile {
    sys::Fd fd;
    uint64_t size;
    std::string head;
};
Result<ImageFile> open_image_file(const std::string& rootfs, const char* key, const std::string& path, uint64_t limit,
                                  size_t head) {
    auto root = TRY_CTX(sys::open(rootfs, O_PATH | O_DIRECTORY | O_CLOEXEC), "rootfs");
    std::string named = std::string(key) + " " + path;
    auto fd = open_regular(root.get(), path);
    if (!fd) return fail(std::string(key) + " " + fd.error().message, fd.error().code);
    struct stat st;
    if (::fstat(fd->get(), &st) < 0) return fail_errno(named + ": stat");
    if (uint64_t(st.st_size) > limit) return fail(named + ": larger than " + std::to_string(limit >> 20) + " MiB", EFBIG);
    ImageFile f{std::move(*fd), uint64_t(st.st_size), std::string(head, '\0')};
    ssize_t n = ::pread(f.fd.get(), f.head.data(), f.head.size(), 0);
    if (n < 0) return fail_errno(named + ": read");
    f.head.resize(size_t(n));
    return f;
}

}  // namespace

Result<Opened> open_kernel(const std::string& rootfs, const std::string& path) {
    // (Copied into the state dir: bounded, whichever kind it is.)
    auto f = TRY(open_image_file(rootfs, kAnnotationKernel, path, kVmlinuxLimit, kHeadBytes));
    auto k = f.head.substr(0, 4) == "\x7f" "ELF" ? parse_vmlinux(f.fd.get(), f.size) : parse_bzimage(f.head);
    if (!k) return fail(what(path) + ": " + k.error().message, k.error().code);
    return Opened{std::move(f.fd), std::move(*k)};
}

namespace {

// What prepare_boot and check share: the kernel, and the files of the
// initrd's appended archive of the image's modules (none when husk's serve).
struct Plan {
    Opened kernel;
    sys::Fd image_initrd;  // the image's own, if any
    std::string husk_initrd;  // husk's initramfs, read
    std::vector<std::pair<std::string, std::string>> appended;
    std::string why;
};

// The image's initrd, opened inside the root, of a format the kernel unpacks.
Result<std::pair<sys::Fd, std::string>> open_initrd(const std::string& rootfs, const std::string& path) {
    auto f = TRY(open_image_file(rootfs, kAnnotationInitrd, path, kInitrdLimit, 8));
    auto format = initrd_format(f.head);
    if (!format) return fail(std::string(kAnnotationInitrd) + " " + path + ": " + format.error().message, format.error().code);
    return std::pair<sys::Fd, std::string>(std::move(f.fd), *format + ", " + std::to_string(f.size >> 10) + " KiB");
}

Result<Plan> plan(const std::string& rootfs, const Requested& req, const std::string& initrd) {
    const std::string& path = req.kernel;
    Plan p{TRY(open_kernel(rootfs, path)), {}, "", {}, ""};
    std::string stacked;
    if (!req.initrd.empty()) {
        auto [fd, format] = TRY(open_initrd(rootfs, req.initrd));
        p.image_initrd = std::move(fd);
        stacked = "; husk's initramfs stacked on the image's initrd (" + format + ")";
    }
    p.husk_initrd = TRY_CTX(sys::read_file(initrd, 256 << 20), "husk's initramfs " + initrd);
    auto husk_modules = initramfs_modules(p.husk_initrd);
    std::string husk_release = TRY(release_of(husk_modules));
    const std::string& release = p.kernel.kernel.release;
    if (release == husk_release) {
        p.why = "Linux " + release + ", with husk's modules (built for it)" + stacked;
        return p;
    }
    auto root = TRY_CTX(sys::open(rootfs, O_PATH | O_DIRECTORY | O_CLOEXEC), "rootfs");
    std::string dir = "/lib/modules/" + release;
    auto dep = read_in_root(root.get(), dir + "/modules.dep", 16 << 20);
    if (!dep)
        return fail(what(path) + " is Linux " + release + ": its modules are not in the image (" + dep.error().message +
                        "), and husk's initramfs has modules for " + husk_release + " only",
                    ENOENT);
    auto builtin = read_in_root(root.get(), dir + "/modules.builtin", 16 << 20);  // none: nothing built in
    std::map<std::string, std::string> orders;
    for (const auto& [name, data] : husk_modules)
        if (name.rfind("order", 0) == 0) orders[name] = std::string(data);
    auto image = parse_module_index(*dep, builtin.value_or(""));
    auto r = rewrite_orders(orders, image, release);
    if (!r) return fail(what(path) + ": " + r.error().message, r.error().code);
    // Appended to husk's archive: the kernel unpacks both, and a later
    // file replaces an earlier one of the same name.
    auto& files = p.appended;
    for (const auto& [name, text] : r->order) files.emplace_back("lib/modules/" + name, text);
    size_t total = 0;
    for (const auto& name : r->needed) {
        std::string rel = dir + "/" + image.modules.at(name).first;
        auto ko = read_in_root(root.get(), rel, kModuleLimit);
        if (!ko) return fail(what(path) + ": module " + name + ": " + ko.error().message, ko.error().code);
        // The image names the dependencies: what they add up to is bounded too.
        if ((total += ko->size()) > kModulesLimit)
            return fail(what(path) + ": the modules husk's agent needs come to more than " +
                            std::to_string(kModulesLimit >> 20) + " MiB with their dependencies",
                        EFBIG);
        if (ko->size() > 3 && ko->substr(0, 4) != "\x7f" "ELF")
            return fail(what(path) + ": module " + rel + " is compressed or not a module (husk loads plain .ko files)", EINVAL);
        files.emplace_back("lib/modules/" + name + ".ko", std::move(*ko));
    }
    p.why = "Linux " + release + ", with the image's modules (" + std::to_string(r->needed.size()) +
            "; husk's are for " + husk_release + ")" + stacked;
    return p;
}

}  // namespace

Result<Checked> check(const std::string& rootfs, const Requested& req, const std::string& initrd) {
    auto p = TRY(plan(rootfs, req, initrd));
    return Checked{p.kernel.kernel, p.why};
}

Result<Boot> prepare_boot(const std::string& rootfs, const Requested& req, const std::string& initrd,
                          const std::string& dir) {
    auto p = TRY(plan(rootfs, req, initrd));
    Boot b{dir + "/image-kernel", initrd, p.why};
    TRY_CTX(sys::copy_file_sparse("/proc/self/fd/" + std::to_string(p.kernel.fd.get()), b.kernel, 0600), "the image's kernel");
    if (p.appended.empty() && !p.image_initrd) return b;
    b.initrd = dir + "/image-initrd.img";
    auto write = [&]() -> Result<void> {
        size_t at = 0;
        if (p.image_initrd) {
            // The image's archive first, copied from what was checked; husk's
            // cpio then starts at a 4-byte boundary (the kernel skips the
            // zeros between archives).
            TRY_CTX(sys::copy_file_sparse("/proc/self/fd/" + std::to_string(p.image_initrd.get()), b.initrd, 0600),
                    "the image's initrd");
            struct stat st;
            if (::stat(b.initrd.c_str(), &st) < 0) return fail_errno("stat " + b.initrd);
            at = size_t(st.st_size);
            if (at > kInitrdLimit) return fail("the image's initrd grew past " + std::to_string(kInitrdLimit >> 20) + " MiB", EFBIG);
        }
        std::string tail((4 - at % 4) % 4, '\0');
        tail += p.husk_initrd;
        if (!p.appended.empty()) tail += cpio_newc(p.appended);
        auto fd = TRY(sys::open(b.initrd, O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
        if (::lseek(fd.get(), off_t(at), SEEK_SET) < 0) return fail_errno("seek " + b.initrd);
        return sys::write_all(fd.get(), tail.data(), tail.size());
    };
    if (auto r = write(); !r) {
        ::unlink(b.kernel.c_str());
        ::unlink(b.initrd.c_str());
        return tl::unexpected(r.error().context("the image's initrd"));
    }
    return b;
}

Result<std::optional<int>> poweroff_signal(const Spec& spec, const std::string& rootfs) {
    if (auto it = spec.annotations.find(kAnnotationPoweroff); it != spec.annotations.end()) {
        auto sig = parse_signal(it->second);
        if (!sig) return fail(std::string("annotation ") + kAnnotationPoweroff + ": " + sig.error().message, EINVAL);
        return std::optional<int>(*sig);
    }
    if (!spec.process || spec.process->args.empty()) return std::optional<int>();
    const std::string& arg0 = spec.process->args[0];
    if (!sys::is_absolute(arg0)) return std::optional<int>();  // (an init is named by its path)
    auto root = TRY_CTX(sys::open(rootfs, O_PATH | O_DIRECTORY | O_CLOEXEC), "rootfs");
    auto fd = sys::open_in_root(root.get(), arg0, O_PATH);
    if (!fd) return std::optional<int>();  // the create fails on it, saying so
    // What the path is in the end, its symlinks followed inside the root.
    std::string target = sys::basename(sys::read_link("/proc/self/fd/" + std::to_string(fd->get())).value_or(""));
    if (target == "systemd") return std::optional<int>(SIGRTMIN + 4);  // systemd(1): poweroff.target
    std::string name = sys::basename(arg0);
    if (target == "busybox" && (name == "init" || name == "linuxrc")) return std::optional<int>(SIGUSR2);
    return std::optional<int>();
}

}  // namespace husk::system_image
