// The syscall layer (sys.h): mounts, bind sources, namespaces, ids, locks.
#include "sys/sys.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
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

#include "husk/numbers.h"

namespace husk::sys {

Result<BindSource> open_bind_source(const std::string& path) {
    BindSource b;
    b.fd = TRY(open(path, O_PATH | O_CLOEXEC));
    struct stat st;
    if (::fstat(b.fd.get(), &st) < 0) return fail_errno("stat " + path);
    b.directory = S_ISDIR(st.st_mode);
    return b;
}

Result<Fd> open_tree_clone(const std::string& path, bool recursive) {
    int fd = int(::syscall(SYS_open_tree, AT_FDCWD, path.c_str(),
                           OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (recursive ? AT_RECURSIVE : 0)));
    if (fd < 0) return fail_errno("open " + path);
    return Fd(fd);
}

Result<BindSource> detached_source(Fd tree) {
    BindSource b;
    struct stat st;
    if (::fstat(tree.get(), &st) < 0) return fail_errno("stat a detached mount");
    b.fd = std::move(tree);
    b.directory = S_ISDIR(st.st_mode);
    b.detached = true;
    return b;
}

Result<void> bind_mount(const BindSource& src, const std::string& dst, bool recursive, bool readonly,
                        bool recursive_readonly) {
    unsigned long rec = recursive ? MS_REC : 0;
    if (src.detached) {
        if (::syscall(SYS_move_mount, src.fd.get(), "", AT_FDCWD, dst.c_str(), MOVE_MOUNT_F_EMPTY_PATH) < 0)
            return fail_errno("attach at " + dst);
    } else {
        TRY(mount("/proc/self/fd/" + std::to_string(src.fd.get()), dst, "", MS_BIND | rec));
    }
    // A bind remount changes the top mount alone (MS_REC means nothing to it).
    if (readonly) TRY(mount("", dst, "", MS_BIND | MS_REMOUNT | MS_RDONLY));
    if (recursive_readonly) {
        struct mount_attr attr{};
        attr.attr_set = MOUNT_ATTR_RDONLY;
        if (::syscall(SYS_mount_setattr, AT_FDCWD, dst.c_str(), AT_RECURSIVE, &attr, sizeof attr) < 0)
            return fail_errno("make " + dst + " read-only, submounts too");
    }
    return {};
}

std::vector<std::string> mounts_under(const std::string& mountinfo, const std::string& dir) {
    auto unescape = [](const std::string& s) {
        std::string out;
        for (size_t i = 0; i < s.size(); ++i) {
            auto digit = [&](size_t k) { return std::isdigit(static_cast<unsigned char>(s[k])) != 0; };
            if (s[i] == '\\' && i + 3 < s.size() && digit(i + 1) && digit(i + 2) && digit(i + 3)) {
                out += char(parse_number<int>(std::string_view(s).substr(i + 1, 3), 8).value_or('?'));
                i += 3;
            } else {
                out += s[i];
            }
        }
        return out;
    };
    std::string prefix = dir + "/";
    std::vector<std::string> out;
    size_t pos = 0;
    while (pos < mountinfo.size()) {
        size_t end = mountinfo.find('\n', pos);
        if (end == std::string::npos) end = mountinfo.size();
        std::istringstream line(mountinfo.substr(pos, end - pos));
        std::string id, parent, devno, root, point;
        if (line >> id >> parent >> devno >> root >> point) {
            point = unescape(point);
            if (point.size() > prefix.size() && point.compare(0, prefix.size(), prefix) == 0) {
                std::string rel = point.substr(prefix.size());
                if (std::find(out.begin(), out.end(), rel) == out.end()) out.push_back(rel);
            }
        }
        pos = end + 1;
    }
    // Parents first: a path sorts after every prefix of itself.
    std::sort(out.begin(), out.end(), [](const std::string& a, const std::string& b) {
        return std::count(a.begin(), a.end(), '/') < std::count(b.begin(), b.end(), '/') ||
               (std::count(a.begin(), a.end(), '/') == std::count(b.begin(), b.end(), '/') && a < b);
    });
    return out;
}

Result<void> umount(const std::string& target, int flags) {
    if (::umount2(target.c_str(), flags) < 0) return fail_errno("umount " + target);
    return {};
}

Result<void> pivot_root(const std::string& new_root, const std::string& put_old) {
    if (::syscall(SYS_pivot_root, new_root.c_str(), put_old.c_str()) < 0) return fail_errno("pivot_root " + new_root);
    return {};
}

Result<void> unshare(int flags) {
    if (::unshare(flags) < 0) return fail_errno("unshare");
    return {};
}

Result<void> map_ids_to_root(uid_t uid, gid_t gid) {
    // Decimal by hand: no allocation before the message.
    auto line = [](char* buf, unsigned long id) {
        char digits[24];
        int n = 0;
        do digits[n++] = char('0' + id % 10); while ((id /= 10) && n < 23);
        int k = 0;
        buf[k++] = '0', buf[k++] = ' ';
        while (n) buf[k++] = digits[--n];
        buf[k++] = ' ', buf[k++] = '1', buf[k++] = '\n';
        return k;
    };
    char ubuf[40], gbuf[40];
    struct {
        const char* path;
        const char* data;
        int len;
    } writes[] = {{"/proc/self/setgroups", "deny", 4},
                  {"/proc/self/uid_map", ubuf, line(ubuf, uid)},
                  {"/proc/self/gid_map", gbuf, line(gbuf, gid)}};
    for (const auto& w : writes) {
        int fd = ::open(w.path, O_WRONLY | O_CLOEXEC);
        bool ok = fd >= 0 && ::write(fd, w.data, size_t(w.len)) == w.len;
        int e = errno;
        if (fd >= 0) ::close(fd);
        if (!ok) return fail_errno(std::string("write ") + w.path, e);
    }
    return {};
}

Result<void> become_userns_root() {
    uid_t uid = ::geteuid();
    gid_t gid = ::getegid();
    if (::unshare(CLONE_NEWUSER) < 0) return fail_errno("unshare user namespace");
    TRY(map_ids_to_root(uid, gid));
    return {};
}

Result<void> chroot(const std::string& path) {
    if (::chroot(path.c_str()) < 0) return fail_errno("chroot " + path);
    return {};
}

Result<void> chdir(const std::string& path) {
    if (::chdir(path.c_str()) < 0) return fail_errno("chdir " + path);
    return {};
}

Result<void> flock(int fd, int op) {
    for (;;) {
        if (::flock(fd, op) == 0) return {};
        if (errno == EINTR) continue;
        return fail_errno("flock");
    }
}

}  // namespace husk::sys
