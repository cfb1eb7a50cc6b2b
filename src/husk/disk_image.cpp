#include "husk/disk_image.h"

#include <fcntl.h>
#include <ftw.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sys/sys.h"

namespace husk {

namespace {
TreeSize g_walk;  // nftw has no user pointer; the shim is single-threaded
int count_entry(const char*, const struct stat* st, int, struct FTW*) {
    g_walk.inodes++;
    if (S_ISREG(st->st_mode) || S_ISLNK(st->st_mode)) g_walk.bytes += (uint64_t(st->st_size) + 4095) / 4096 * 4096;
    return 0;
}
}  // namespace

Result<TreeSize> tree_size(const std::string& dir) {
    g_walk = {};
    // FTW_PHYS: symlinks are entries, not followed; mount points are crossed
    // (the share is bind mounts).
    if (::nftw(dir.c_str(), count_entry, 64, FTW_PHYS) != 0) return fail_errno("walk " + dir);
    return g_walk;
}

uint64_t share_image_bytes(const TreeSize& t, uint64_t slack_mib) {
    // Metadata: a 256-byte inode and a directory entry per file, plus the
    // block groups' own; a quarter on top of the data covers it.
    uint64_t b = t.bytes + t.bytes / 4 + t.inodes * 512 + (slack_mib << 20);
    return (b + (1 << 20) - 1) >> 20 << 20;
}

uint64_t share_image_inodes(const TreeSize& t) { return t.inodes * 2 + 4096; }

Result<void> make_share_image(const std::string& dir, const std::string& image, uint64_t slack_mib) {
    auto t = TRY(tree_size(dir));
    std::string mkfs;
    for (const char* p : {"/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"})
        if (::access(p, X_OK) == 0) mkfs = p;
    if (mkfs.empty()) mkfs = sys::find_program("mkfs.ext4").value_or("");
    if (mkfs.empty()) return fail("mkfs.ext4 not found (apt install e2fsprogs)", ENOENT);
    auto out = TRY(sys::open(image + ".log", O_RDWR | O_CREAT | O_TRUNC, 0600));
    // No journal: the image lives as long as the VM. -m 0: no blocks
    // reserved for root; the container's root is its only user.
    std::vector<std::string> argv = {mkfs, "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-m", "0",
                                     "-b", "4096", "-N", std::to_string(share_image_inodes(t)), "-L", "husk-share",
                                     "-E", "nodiscard", "-d", dir, image,
                                     std::to_string(share_image_bytes(t, slack_mib) >> 10) + "k"};
    sys::SpawnOptions o;
    auto null = TRY(sys::open("/dev/null", O_RDONLY));
    o.fds = {{null.get(), 0}, {out.get(), 1}, {out.get(), 2}};
    pid_t pid = TRY_CTX(sys::spawn(argv, o), "mkfs.ext4");
    int st = 0;
    while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    std::string log = sys::read_file(image + ".log", 4096).value_or("");
    ::unlink((image + ".log").c_str());
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        ::unlink(image.c_str());
        while (!log.empty() && log.back() == '\n') log.pop_back();
        return fail("mkfs.ext4 -d " + dir + " failed: " + log, EIO);
    }
    return {};
}

}  // namespace husk
