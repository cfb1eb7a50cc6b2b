// The syscall layer (sys.h): files and directories.
#include "sys/sys.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>
#include <sched.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <memory>
#include <sstream>
#include <thread>

namespace husk::sys {

Result<Fd> open(const std::string& path, int flags, mode_t mode) {
    int fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
    if (fd < 0) return fail_errno("open " + path);
    return Fd(fd);
}

Result<std::string> read_to_eof(int fd, size_t limit) {
    std::string out;
    char buf[8192];
    for (;;) {
        ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR) continue;
            return fail_errno("read");
        }
        if (n == 0) break;
        if (out.size() + size_t(n) > limit) return fail("input larger than " + std::to_string(limit) + " bytes", EFBIG);
        out.append(buf, size_t(n));
    }
    return out;
}

std::vector<std::string> lines(const std::string& text) {
    std::vector<std::string> out;
    for (size_t pos = 0; pos < text.size();) {
        size_t e = text.find('\n', pos);
        if (e == std::string::npos) e = text.size();
        if (e > pos) out.push_back(text.substr(pos, e - pos));
        pos = e + 1;
    }
    return out;
}

Result<Fd> open_in_root(int root, const std::string& rel, int flags) {
    struct open_how how;
    std::memset(&how, 0, sizeof how);
    how.flags = uint64_t(flags | O_CLOEXEC);
    how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
    std::string p = rel.empty() ? "." : rel;
    int fd = int(::syscall(SYS_openat2, root, p.c_str(), &how, sizeof how));
    if (fd < 0) return fail_errno("open " + rel + " in container root");
    return Fd(fd);
}

Result<std::string> read_link(const std::string& path) {
    char buf[PATH_MAX];
    ssize_t n = ::readlink(path.c_str(), buf, sizeof buf);
    if (n < 0) return fail_errno("readlink " + path);
    return std::string(buf, size_t(n));
}

std::optional<std::string> search_path(const std::string& name, const std::string& path) {
    size_t pos = 0;
    while (pos <= path.size()) {
        size_t e = path.find(':', pos);
        if (e == std::string::npos) e = path.size();
        std::string dir = path.substr(pos, e - pos);
        std::string full = (dir.empty() ? "." : dir) + "/" + name;
        struct stat st;
        if (::stat(full.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(full.c_str(), X_OK) == 0) return full;
        pos = e + 1;
    }
    return std::nullopt;
}

std::optional<std::string> find_program(const std::string& name) {
    if (name.find('/') != std::string::npos) return ::access(name.c_str(), X_OK) == 0 ? std::optional(name) : std::nullopt;
    const char* env = ::getenv("PATH");
    return search_path(name, env && *env ? env : "/usr/local/bin:/usr/bin:/bin");
}

Result<std::string> read_file(const std::string& path, size_t limit) {
    auto fd = TRY(open(path, O_RDONLY));
    return with_context(read_to_eof(fd.get(), limit), "read " + path);
}

Result<void> write_all(int fd, const void* data, size_t len) {
    auto p = static_cast<const char*>(data);
    while (len > 0) {
        ssize_t n = ::write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return fail_errno("write");
        }
        p += n;
        len -= size_t(n);
    }
    return {};
}

Result<void> write_file(const std::string& path, const std::string& data, mode_t mode) {
    auto fd = TRY(open(path, O_WRONLY | O_CREAT | O_TRUNC, mode));
    return with_context(write_all(fd.get(), data), "write " + path);
}

Result<void> write_file_atomic(const std::string& path, const std::string& data, mode_t mode) {
    std::string tmp = path + ".tmp";
    {
        auto fd = TRY(open(tmp, O_WRONLY | O_CREAT | O_TRUNC, mode));
        TRY_CTX(write_all(fd.get(), data), "write " + tmp);
    }
    if (::rename(tmp.c_str(), path.c_str()) < 0) {
        int e = errno;
        ::unlink(tmp.c_str());
        return fail_errno("rename " + tmp, e);
    }
    return {};
}

Result<void> copy_file_sparse(const std::string& from, const std::string& to, mode_t mode) {
    auto in = TRY(open(from, O_RDONLY | O_CLOEXEC));
    struct stat st{};
    if (::fstat(in.get(), &st) < 0) return fail_errno("stat " + from);
    ::unlink(to.c_str());
    auto out = TRY(open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode));
    auto failed = [&](const std::string& what) {
        int e = errno;
        ::unlink(to.c_str());
        return fail_errno(what + " " + from + " to " + to, e);
    };
    if (::ftruncate(out.get(), st.st_size) < 0) return failed("size");
    bool plain = false;
    for (off_t pos = 0; pos < st.st_size;) {
        off_t data = ::lseek(in.get(), pos, SEEK_DATA);
        if (data < 0 && errno == ENXIO) break;  // holes to the end
        if (data < 0) return failed("seek data in");
        off_t hole = ::lseek(in.get(), data, SEEK_HOLE);
        if (hole < 0) return failed("seek hole in");
        for (off_t off = data; off < hole;) {
            loff_t src = off, dst = off;
            ssize_t n = -1;
            if (!plain) {
                n = ::copy_file_range(in.get(), &src, out.get(), &dst, size_t(hole - off), 0);
                // Across filesystems of different kinds (an overlay's file
                // into a tmpfs) the kernel will not: bytes through us.
                if (n < 0 && (errno == EXDEV || errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL)) plain = true;
            }
            if (plain) {
                char buf[1 << 16];
                n = ::pread(in.get(), buf, std::min(sizeof buf, size_t(hole - off)), off);
                if (n > 0 && (::lseek(out.get(), off, SEEK_SET) < 0 || !write_all(out.get(), buf, size_t(n))))
                    return failed("write");
            }
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) return failed("copy");
            if (n == 0) {
                ::unlink(to.c_str());
                return fail("copy " + from + " to " + to + ": it ended early", EIO);
            }
            off += n;
        }
        pos = hole;
    }
    if (::fsync(out.get()) < 0) return failed("sync the copy of");
    return {};
}

Result<void> mkdir_p(const std::string& path, mode_t mode) {
    if (path.empty()) return {};
    std::string cur;
    size_t pos = 0;
    while (pos != std::string::npos) {
        pos = path.find('/', pos + 1);
        cur = path.substr(0, pos);
        if (cur.empty()) continue;
        if (::mkdir(cur.c_str(), mode) < 0 && errno != EEXIST) return fail_errno("mkdir " + cur);
    }
    if (!is_dir(path)) return fail("mkdir " + path + ": not a directory", ENOTDIR);
    return {};
}

static Result<void> remove_at(int dirfd, const std::string& name, dev_t dev, const std::string& shown) {
    struct stat st;
    if (::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0) {
        if (errno == ENOENT) return {};
        return fail_errno("stat " + shown);
    }
    if (S_ISDIR(st.st_mode)) {
        // Never into a mount: a bind mount of the same filesystem has the
        // same st_dev, so ask the kernel whether this is a mount's root.
        struct statx sx;
        bool mount_root = ::statx(dirfd, name.c_str(), AT_SYMLINK_NOFOLLOW, 0, &sx) == 0 &&
                          (sx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) && (sx.stx_attributes & STATX_ATTR_MOUNT_ROOT);
        if (st.st_dev != dev || mount_root) return fail("remove " + shown + ": is a mount point", EBUSY);
        int fd = ::openat(dirfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) return fail_errno("open " + shown);
        DIR* d = ::fdopendir(fd);
        if (!d) {
            ::close(fd);
            return fail_errno("opendir " + shown);
        }
        std::vector<std::string> names;
        while (auto* e = ::readdir(d)) {
            std::string n = e->d_name;
            if (n != "." && n != "..") names.push_back(n);
        }
        Result<void> r;
        for (auto& n : names) {
            r = remove_at(::dirfd(d), n, dev, shown + "/" + n);
            if (!r) break;
        }
        ::closedir(d);
        if (!r) return r;
        if (::unlinkat(dirfd, name.c_str(), AT_REMOVEDIR) < 0 && errno != ENOENT) return fail_errno("rmdir " + shown);
        return {};
    }
    if (::unlinkat(dirfd, name.c_str(), 0) < 0 && errno != ENOENT) return fail_errno("unlink " + shown);
    return {};
}

Result<void> remove_all(const std::string& path) {
    struct stat st;
    if (::lstat(path.c_str(), &st) < 0) {
        if (errno == ENOENT) return {};
        return fail_errno("stat " + path);
    }
    auto parent = TRY(open(dirname(path), O_RDONLY | O_DIRECTORY));
    return remove_at(parent.get(), basename(path), st.st_dev, path);
}

bool exists(const std::string& path) {
    struct stat st;
    return ::lstat(path.c_str(), &st) == 0;
}

Result<std::vector<std::string>> list_dir(const std::string& path) {
    std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(path.c_str()), ::closedir);
    if (!d) return fail_errno("open " + path);
    std::vector<std::string> names;
    while (auto* e = ::readdir(d.get())) {
        std::string n = e->d_name;
        if (n != "." && n != "..") names.push_back(std::move(n));
    }
    std::sort(names.begin(), names.end());
    return names;
}

bool is_dir(const std::string& path) {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string dirname(const std::string& path) {
    auto p = path.find_last_of('/');
    if (p == std::string::npos) return ".";
    if (p == 0) return "/";
    return path.substr(0, p);
}

std::string basename(const std::string& path) {
    auto p = path.find_last_of('/');
    return p == std::string::npos ? path : path.substr(p + 1);
}

Result<std::string> realpath(const std::string& path) {
    char buf[PATH_MAX];
    if (!::realpath(path.c_str(), buf)) return fail_errno("resolve " + path);
    return std::string(buf);
}

}  // namespace husk::sys
