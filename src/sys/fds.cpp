// The syscall layer (sys.h): pipes, sockets and the fds passed on them, terminals.
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

}  // namespace husk::sys
