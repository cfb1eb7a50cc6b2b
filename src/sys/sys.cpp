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

Result<std::string> read_link(const std::string& path) {
    char buf[PATH_MAX];
    ssize_t n = ::readlink(path.c_str(), buf, sizeof buf);
    if (n < 0) return fail_errno("readlink " + path);
    return std::string(buf, size_t(n));
}

std::optional<std::string> find_program(const std::string& name) {
    if (name.find('/') != std::string::npos) return ::access(name.c_str(), X_OK) == 0 ? std::optional(name) : std::nullopt;
    const char* env = ::getenv("PATH");
    std::string path = env && *env ? env : "/usr/local/bin:/usr/bin:/bin";
    size_t pos = 0;
    for (;;) {
        size_t e = path.find(':', pos);
        std::string dir = path.substr(pos, e == std::string::npos ? std::string::npos : e - pos);
        std::string full = (dir.empty() ? "." : dir) + "/" + name;
        if (::access(full.c_str(), X_OK) == 0) return full;
        if (e == std::string::npos) return std::nullopt;
        pos = e + 1;
    }
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
    for (off_t pos = 0; pos < st.st_size;) {
        off_t data = ::lseek(in.get(), pos, SEEK_DATA);
        if (data < 0 && errno == ENXIO) break;  // holes to the end
        if (data < 0) return failed("seek data in");
        off_t hole = ::lseek(in.get(), data, SEEK_HOLE);
        if (hole < 0) return failed("seek hole in");
        for (off_t off = data; off < hole;) {
            loff_t src = off, dst = off;
            ssize_t n = ::copy_file_range(in.get(), &src, out.get(), &dst, size_t(hole - off), 0);
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

Result<std::pair<Fd, Fd>> pipe(int flags) {
    int p[2];
    if (::pipe2(p, flags) < 0) return fail_errno("pipe");
    return std::make_pair(Fd(p[0]), Fd(p[1]));
}

Result<Fd> dup(int fd) {
    int n = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (n < 0) return fail_errno("dup");
    return Fd(n);
}

Result<std::pair<Fd, Fd>> socketpair(int type) {
    int p[2];
    if (::socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, p) < 0) return fail_errno("socketpair");
    return std::make_pair(Fd(p[0]), Fd(p[1]));
}

Result<void> set_nonblock(int fd, bool on) {
    int fl = ::fcntl(fd, F_GETFL);
    if (fl < 0) return fail_errno("fcntl");
    fl = on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
    if (::fcntl(fd, F_SETFL, fl) < 0) return fail_errno("fcntl");
    return {};
}

Result<void> set_cloexec(int fd, bool on) {
    int fl = ::fcntl(fd, F_GETFD);
    if (fl < 0) return fail_errno("fcntl");
    fl = on ? (fl | FD_CLOEXEC) : (fl & ~FD_CLOEXEC);
    if (::fcntl(fd, F_SETFD, fl) < 0) return fail_errno("fcntl");
    return {};
}

Result<bool> wait_fd(int fd, short events, int timeout_ms) {
    struct pollfd p{fd, events, 0};
    for (;;) {
        int n = ::poll(&p, 1, timeout_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            return fail_errno("poll");
        }
        return n > 0;
    }
}

// Fill a sockaddr_un, going through /proc/self/fd/<dirfd> when the path is
// too long; `holder` keeps that dir fd open until connect/bind is done.
static Result<socklen_t> make_addr(const std::string& path, sockaddr_un& addr, Fd& holder) {
    std::memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    std::string p = path;
    if (p.size() >= sizeof addr.sun_path) {
        holder = TRY(open(dirname(path), O_PATH | O_DIRECTORY));
        p = "/proc/self/fd/" + std::to_string(holder.get()) + "/" + basename(path);
        if (p.size() >= sizeof addr.sun_path) return fail("socket name too long: " + path, ENAMETOOLONG);
    }
    std::memcpy(addr.sun_path, p.c_str(), p.size());
    return socklen_t(offsetof(sockaddr_un, sun_path) + p.size() + 1);
}

Result<Fd> unix_listen(const std::string& path, int backlog) {
    Fd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!s) return fail_errno("socket");
    sockaddr_un addr;
    Fd holder;
    socklen_t len = TRY(make_addr(path, addr, holder));
    ::unlink(path.c_str());
    if (::bind(s.get(), reinterpret_cast<sockaddr*>(&addr), len) < 0) return fail_errno("bind " + path);
    if (::listen(s.get(), backlog) < 0) return fail_errno("listen " + path);
    return s;
}

Result<Fd> unix_connect(const std::string& path, int type) {
    Fd s(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
    if (!s) return fail_errno("socket");
    sockaddr_un addr;
    Fd holder;
    socklen_t len = TRY(make_addr(path, addr, holder));
    for (;;) {
        if (::connect(s.get(), reinterpret_cast<sockaddr*>(&addr), len) == 0) break;
        if (errno == EINTR) continue;
        return fail_errno("connect " + path);
    }
    return s;
}

Result<void> send_fds(int sock, const std::string& data, const std::vector<int>& fds) {
    if (fds.size() > kMaxPassedFds) return fail("too many fds to pass", EINVAL);
    char one = 0;
    iovec iov{data.empty() ? &one : const_cast<char*>(data.data()), data.empty() ? 1 : data.size()};
    alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int) * kMaxPassedFds)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (!fds.empty()) {
        std::memset(ctl, 0, sizeof ctl);
        msg.msg_control = ctl;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
        cmsghdr* c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
        std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    for (;;) {
        ssize_t n = ::sendmsg(sock, &msg, MSG_NOSIGNAL);
        if (n >= 0) {
            if (size_t(n) < iov.iov_len) TRY(write_all(sock, static_cast<char*>(iov.iov_base) + n, iov.iov_len - size_t(n)));
            return {};
        }
        if (errno != EINTR) return fail_errno("sendmsg");
    }
}

Result<std::string> recv_fds(int sock, size_t max, std::vector<Fd>& fds) {
    std::string buf(max, '\0');
    iovec iov{buf.data(), buf.size()};
    alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int) * kMaxPassedFds)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctl;
    msg.msg_controllen = sizeof ctl;
    ssize_t n;
    do n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0) return fail_errno("recvmsg");
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; ++i) {
            int fd;
            std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            fds.emplace_back(fd);  // owned, so a truncated or surplus set is closed
        }
    }
    if (msg.msg_flags & MSG_CTRUNC) return fail("passed fds were truncated", EMSGSIZE);
    buf.resize(size_t(n));
    return buf;
}

Result<Pty> open_pty(const std::string& ptmx) {
    Pty p;
    p.master = TRY(open(ptmx, O_RDWR | O_NOCTTY));
    int unlock = 0;
    if (::ioctl(p.master.get(), TIOCSPTLCK, &unlock) < 0) return fail_errno("unlock pty");
    // TIOCGPTPEER opens the peer through the master itself: right even when
    // `ptmx` belongs to another devpts instance than /dev/pts.
    int fd = ::ioctl(p.master.get(), TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) return fail_errno("open pty peer");
    p.slave = Fd(fd);
    unsigned n = 0;
    if (::ioctl(p.master.get(), TIOCGPTN, &n) < 0) return fail_errno("pty number");
    p.name = "/dev/pts/" + std::to_string(n);
    return p;
}

Result<void> take_relay_tty(int slave) {
    struct termios t;
    if (::tcgetattr(slave, &t) < 0) return fail_errno("tcgetattr");
    ::cfmakeraw(&t);
    if (::tcsetattr(slave, TCSANOW, &t) < 0) return fail_errno("tcsetattr");
    if (::ioctl(slave, TIOCSCTTY, 0) < 0) return fail_errno("TIOCSCTTY");
    return {};
}

std::optional<struct winsize> window_size(int fd) {
    struct winsize ws{};
    if (::ioctl(fd, TIOCGWINSZ, &ws) < 0 || !ws.ws_row || !ws.ws_col) return std::nullopt;
    return ws;
}

Result<void> send_console(const std::string& socket_path, const Pty& pty) {
    auto s = unix_connect(socket_path, SOCK_STREAM);
    // Some callers listen with SOCK_SEQPACKET.
    if (!s && s.error().code == EPROTOTYPE) s = unix_connect(socket_path, SOCK_SEQPACKET);
    auto fd = TRY_CTX(std::move(s), "console socket");
    TRY_CTX(send_fds(fd.get(), pty.name, {pty.master.get()}), "console socket");
    return {};
}

Result<Fd> accept(int listen_fd, int flags) {
    for (;;) {
        int fd = ::accept4(listen_fd, nullptr, nullptr, flags | SOCK_CLOEXEC);
        if (fd >= 0) return Fd(fd);
        if (errno == EINTR) continue;
        return fail_errno("accept");
    }
}

Result<void> mount(const std::string& src, const std::string& dst, const std::string& type,
                   unsigned long flags, const std::string& data) {
    if (::mount(src.empty() ? nullptr : src.c_str(), dst.c_str(), type.empty() ? nullptr : type.c_str(), flags,
                data.empty() ? nullptr : data.c_str()) < 0)
        return fail_errno("mount " + (src.empty() ? type : src) + " on " + dst);
    return {};
}

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
                out += char(std::stoi(s.substr(i + 1, 3), nullptr, 8));
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

std::string map_ids_to_root(uid_t uid, gid_t gid) {
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
        if (!ok) return std::string("write ") + w.path + ": " + std::strerror(e);
    }
    return "";
}

Result<void> become_userns_root() {
    uid_t uid = ::geteuid();
    gid_t gid = ::getegid();
    if (::unshare(CLONE_NEWUSER) < 0) return fail_errno("unshare user namespace");
    if (auto e = map_ids_to_root(uid, gid); !e.empty()) return fail(e, EPERM);
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

static std::optional<std::pair<char, unsigned long long>> proc_stat(pid_t pid) {
    auto s = read_file("/proc/" + std::to_string(pid) + "/stat", 4096);
    if (!s) return std::nullopt;
    // comm may contain spaces and parens: fields resume after the last ')'.
    auto rp = s->rfind(')');
    if (rp == std::string::npos || rp + 2 >= s->size()) return std::nullopt;
    const char* p = s->c_str() + rp + 2;
    char state = *p;
    // field 3 is state; start time is field 22, 19 fields further on.
    for (int field = 3; field < 22; ++field) {
        p = std::strchr(p, ' ');
        if (!p) return std::nullopt;
        ++p;
    }
    return std::make_pair(state, std::strtoull(p, nullptr, 10));
}

std::optional<unsigned long long> proc_start_time(pid_t pid) {
    auto st = proc_stat(pid);
    if (!st) return std::nullopt;
    return st->second;
}

bool process_alive(pid_t pid, unsigned long long start_time) {
    if (pid <= 0) return false;
    auto st = proc_stat(pid);
    if (!st) return false;
    if (start_time != 0 && st->second != start_time) return false;
    return st->first != 'Z' && st->first != 'X';
}

Result<Fd> pidfd_open(pid_t pid) {
    int fd = int(::syscall(SYS_pidfd_open, pid, 0));
    if (fd < 0) return fail_errno("pidfd_open " + std::to_string(pid));
    return Fd(fd);
}

std::vector<pid_t> child_pids(pid_t pid) {
    std::vector<pid_t> out;
    auto text = read_file("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children", 1 << 16);
    if (!text) return out;
    std::istringstream in(*text);
    for (pid_t c; in >> c;) out.push_back(c);
    return out;
}

std::vector<MemRange> file_mappings(const std::string& maps, const std::vector<std::string>& paths) {
    // "start-end perms offset dev inode   path": the path is the rest of
    // the line after five fields (it may hold spaces; " (deleted)" too).
    std::vector<MemRange> out;
    std::istringstream in(maps);
    for (std::string line; std::getline(in, line);) {
        std::istringstream f(line);
        std::string range, perms, offset, dev, inode;
        if (!(f >> range >> perms >> offset >> dev >> inode)) continue;
        std::string path;
        std::getline(f >> std::ws, path);
        if (std::find(paths.begin(), paths.end(), path) == paths.end()) continue;
        auto dash = range.find('-');
        if (dash == std::string::npos) continue;
        char* end = nullptr;
        unsigned long long a = std::strtoull(range.c_str(), &end, 16);
        if (end != range.c_str() + dash) continue;
        unsigned long long b = std::strtoull(range.c_str() + dash + 1, &end, 16);
        if (*end != '\0' || b <= a) continue;
        out.push_back({uintptr_t(a), size_t(b - a)});
    }
    return out;
}

Result<uint64_t> process_madvise(int pidfd, const std::vector<MemRange>& ranges, int advice) {
    uint64_t done = 0;
    for (const auto& r : ranges) {  // one range a call; the first refusal ends it
        struct iovec v = {reinterpret_cast<void*>(r.start), r.len};
        long n = ::syscall(SYS_process_madvise, pidfd, &v, 1, advice, 0);
        if (n < 0) return fail_errno("process_madvise");
        done += uint64_t(n);
    }
    return done;
}

bool wait_process_exit(pid_t pid, unsigned long long start_time, std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    auto pfd = pidfd_open(pid);
    while (process_alive(pid, start_time)) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) return false;
        // A pidfd turns readable at exit (zombie included); poll in short
        // steps anyway so a reused pid cannot trap us.
        if (pfd) (void)wait_fd(pfd->get(), POLLIN, int(std::min<long>(left.count(), 50)));
        else std::this_thread::sleep_for(std::chrono::milliseconds(std::min<long>(left.count(), 20)));
    }
    return true;
}

std::string self_exe_dir() {
    char buf[PATH_MAX];
    ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n <= 0) return ".";
    buf[n] = 0;
    return dirname(buf);
}

// close_range(2) over [lo, hi]; where the kernel has none (before 5.9),
// one by one up to the fd limit.
static void close_span(unsigned lo, unsigned hi, bool cloexec) {
    if (::close_range(lo, hi, cloexec ? CLOSE_RANGE_CLOEXEC : 0) == 0) return;
    struct rlimit rl{};
    unsigned top = 1u << 20;  // the kernel's default nr_open
    if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_max != RLIM_INFINITY) top = unsigned(std::min<rlim_t>(rl.rlim_max, top));
    for (unsigned fd = lo; fd <= hi && fd < top; ++fd)
        if (cloexec) ::fcntl(int(fd), F_SETFD, FD_CLOEXEC);
        else ::close(int(fd));
}

void close_fds_except(int low, const int* keep, size_t n) {
    unsigned cur = unsigned(std::max(low, 0));
    for (;;) {
        unsigned next = ~0U;  // the lowest kept fd at or above cur
        for (size_t i = 0; i < n; ++i)
            if (keep[i] >= 0 && unsigned(keep[i]) >= cur && unsigned(keep[i]) < next) next = unsigned(keep[i]);
        if (next == ~0U) return close_span(cur, ~0U, false);
        if (next > cur) close_span(cur, next - 1, false);
        cur = next + 1;
    }
}

void cloexec_from(int low) { close_span(unsigned(std::max(low, 0)), ~0U, true); }

Result<pid_t> spawn(const std::vector<std::string>& argv, const SpawnOptions& o) {
    // The child writes why it failed into this pipe; exec closes it.
    auto [err_r, err_w_] = TRY(pipe(O_CLOEXEC));
    int err_w = err_w_.get();  // a plain int: clang 14 cannot capture a structured binding
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    int first_free = 3;
    for (auto& [from, to] : o.fds) first_free = std::max(first_free, to + 1);
    std::vector<int> keep{err_w};  // built before the fork: the child only reads it
    for (auto& [from, to] : o.fds) keep.push_back(to);
    pid_t parent = getpid();
    pid_t pid;
    if (o.clone_flags) {
        // struct clone_args, version 0 (<linux/sched.h> clashes with <sched.h>).
        struct {
            uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
        } ca{};
        ca.flags = o.clone_flags;
        ca.exit_signal = SIGCHLD;
        pid = pid_t(::syscall(SYS_clone3, &ca, sizeof ca));
        if (pid < 0) return fail_errno("clone3");
    } else {
        pid = fork();
        if (pid < 0) return fail_errno("fork");
    }
    if (pid == 0) {
        auto die = [&](const std::string& what) {
            std::string m = what + ": " + std::strerror(errno);
            (void)!::write(err_w, m.data(), m.size());
            _exit(127);
        };
        if (o.die_with_parent) {
            if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) die("prctl");
            if (!(o.clone_flags & CLONE_NEWPID) && getppid() != parent) _exit(1);  // already orphaned
        }
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, nullptr);
        signal(SIGPIPE, SIG_DFL);  // an ignored SIGPIPE would survive exec
        // Park the sources above every target first, so one dup2 cannot
        // clobber a source another still needs; dup2 clears close-on-exec.
        std::vector<int> parked;
        for (auto& [from, to] : o.fds) {
            int p = ::fcntl(from, F_DUPFD_CLOEXEC, std::max(first_free, err_w + 1));
            if (p < 0) die("dup fd " + std::to_string(from));
            parked.push_back(p);
        }
        for (size_t i = 0; i < o.fds.size(); ++i)
            if (::dup2(parked[i], o.fds[i].second) < 0) die("dup2 fd " + std::to_string(o.fds[i].second));
        // Every fd but the mapped ones (which may leave gaps: a lifeline
        // at 100) and the error pipe, however high the caller's fds go.
        close_fds_except(3, keep.data(), keep.size());
        if (o.in_child)
            if (std::string why = o.in_child(); !why.empty()) {
                (void)!::write(err_w, why.data(), why.size());
                _exit(127);
            }
        if (!o.cwd.empty() && ::chdir(o.cwd.c_str()) < 0) die("chdir " + o.cwd);
        for (const auto& cg : o.cgroups) {
            int fd = ::open((cg + "/cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC);
            if (fd < 0 || ::write(fd, "0", 1) != 1) die("join cgroup " + cg);
            ::close(fd);
        }
        std::vector<char*> envp;
        if (o.env) {
            for (auto& e : *o.env) envp.push_back(const_cast<char*>(e.c_str()));
            envp.push_back(nullptr);
        }
        if (!o.path.empty()) ::execve(o.path.c_str(), args.data(), o.env ? envp.data() : environ);
        else if (o.env) ::execvpe(args[0], args.data(), envp.data());
        else ::execvp(args[0], args.data());
        die("exec " + (o.path.empty() ? argv[0] : o.path));
    }
    err_w_.reset();
    auto msg = read_to_eof(err_r.get(), 4096);
    if (!msg || !msg->empty()) {
        int st;
        while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
        }
        return fail(msg ? *msg : msg.error().message, ENOEXEC);
    }
    return pid;
}

void ensure_std_fds() {
    for (int fd = 0; fd <= 2; ++fd)
        if (::fcntl(fd, F_GETFD) < 0 && errno == EBADF) {
            int n = ::open("/dev/null", O_RDWR);  // lowest free: this one
            if (n >= 0 && n != fd) ::close(n);
        }
}

void die_of_signal(int sig) {
    struct rlimit nocore{0, 0};
    setrlimit(RLIMIT_CORE, &nocore);
    signal(sig, SIG_DFL);
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, sig);
    sigprocmask(SIG_UNBLOCK, &s, nullptr);
    ::kill(getpid(), sig);
    _exit(128 + sig);
}

}  // namespace husk::sys
