#include <fcntl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <sstream>

#include <catch2/catch.hpp>

#include "husk/numbers.h"
#include "sys/sys.h"
#include "tmpdir.h"

using namespace husk;

TEST_CASE("spawn maps fds, even onto each other's numbers, and closes the rest", "[sys]") {
    auto a = sys::pipe().value();
    auto b = sys::pipe().value();
    auto out = sys::pipe().value();
    auto stray = sys::pipe().value();  // not mapped: must be closed in the child
    REQUIRE(sys::write_all(a.second.get(), "A\n"));
    REQUIRE(sys::write_all(b.second.get(), "B\n"));
    a.second.reset();
    b.second.reset();
    // Swap: a's reader goes to b's reader's number and vice versa.
    sys::SpawnOptions o;
    o.fds = {{a.first.get(), b.first.get()}, {b.first.get(), a.first.get()}, {out.second.get(), 9}};
    std::string script = "read x <&" + std::to_string(b.first.get()) + "; read y <&" + std::to_string(a.first.get()) +
                         "; echo \"$x$y\" >&9; [ -e /proc/self/fd/" + std::to_string(stray.second.get()) +
                         " ] && echo leaked >&9; exit 0";
    auto pid = sys::spawn({"sh", "-c", script}, o);
    REQUIRE(pid);
    out.second.reset();
    stray.second.reset();
    CHECK(sys::read_to_eof(out.first.get()).value() == "AB\n");
    int st;
    waitpid(*pid, &st, 0);
    CHECK(WIFEXITED(st));
    CHECK(WEXITSTATUS(st) == 0);
}

TEST_CASE("spawn closes inherited fds above 1024 too, and keeps mapped ones at any number", "[sys]") {
    // A caller with more fds than select() knows (runc's CVE-2024-21626 was
    // a leaked fd): inheritable fds at 1030 and 5000 must not reach the child.
    struct rlimit old{}, big{};
    REQUIRE(getrlimit(RLIMIT_NOFILE, &old) == 0);
    big = old;
    big.rlim_cur = std::min<rlim_t>(old.rlim_max, 8192);
    REQUIRE(big.rlim_cur > 5000);
    REQUIRE(setrlimit(RLIMIT_NOFILE, &big) == 0);
    int null = ::open("/dev/null", O_RDONLY);  // inheritable
    REQUIRE(null >= 0);
    REQUIRE(::dup2(null, 1030) == 1030);
    REQUIRE(::dup2(null, 5000) == 5000);
    auto out = sys::pipe().value();
    sys::SpawnOptions o;
    o.fds = {{out.second.get(), 1}, {null, 2000}};  // kept, with gaps on both sides
    auto pid = sys::spawn({"sh", "-c", "ls /proc/$$/fd; true"}, o);  // ls is the shell's child
    REQUIRE(pid);
    out.second.reset();
    auto seen = sys::read_to_eof(out.first.get()).value();
    ::close(1030);
    ::close(5000);
    ::close(null);
    setrlimit(RLIMIT_NOFILE, &old);
    int st;
    waitpid(*pid, &st, 0);
    CHECK(seen == "0\n1\n2\n2000\n");

    // The same for the agent's exec path: close-on-exec from a number up.
    int marked = ::open("/dev/null", O_RDONLY);
    REQUIRE(marked >= 0);
    sys::cloexec_from(marked);
    CHECK((::fcntl(marked, F_GETFD) & FD_CLOEXEC) != 0);
    CHECK((::fcntl(0, F_GETFD) & FD_CLOEXEC) == 0);
    ::close(marked);
}

TEST_CASE("spawn reports exec failure in the parent and reaps the child", "[sys]") {
    auto r = sys::spawn({"/nonexistent/husk-test-binary"}, {});
    REQUIRE_FALSE(r);
    CHECK(r.error().message == "exec /nonexistent/husk-test-binary: No such file or directory");
    CHECK(waitpid(-1, nullptr, WNOHANG) < 0);  // nothing left to reap
    sys::SpawnOptions o;
    o.cwd = "/nonexistent-dir";
    auto c = sys::spawn({"true"}, o);
    REQUIRE_FALSE(c);
    CHECK(c.error().message.rfind("chdir /nonexistent-dir", 0) == 0);
}

TEST_CASE("a spawn's in_child step fails with its error in the parent, or lets the exec go on", "[sys]") {
    sys::SpawnOptions o;
    // (What the jail's enter() is: a Result, whose message the parent gets.)
    o.in_child = []() -> Result<void> { return fail_errno("jail: mount proc", EPERM); };
    auto r = sys::spawn({"true"}, o);
    REQUIRE_FALSE(r);
    CHECK(r.error().message == "jail: mount proc: Operation not permitted");
    CHECK(waitpid(-1, nullptr, WNOHANG) < 0);  // reaped
    o.in_child = []() -> Result<void> { return {}; };
    auto ok = sys::spawn({"true"}, o);
    REQUIRE(ok);
    int st = 0;
    REQUIRE(waitpid(*ok, &st, 0) == *ok);
    CHECK(WIFEXITED(st));
    CHECK(WEXITSTATUS(st) == 0);
}

TEST_CASE("fds pass over a unix socket with their message; surplus and EOF are clean", "[sys]") {
    auto sp = sys::socketpair(SOCK_STREAM).value();
    auto p = sys::pipe().value();
    REQUIRE(sys::send_fds(sp.first.get(), "hello\n", {p.second.get(), p.second.get()}));
    std::vector<sys::Fd> got;
    auto msg = sys::recv_fds(sp.second.get(), 4096, got);
    REQUIRE(msg);
    CHECK(*msg == "hello\n");
    REQUIRE(got.size() == 2);
    // The received fd is the pipe's write end: bytes written reach the reader.
    p.second.reset();
    REQUIRE(sys::write_all(got[0].get(), "via passed fd"));
    got.clear();
    CHECK(sys::read_to_eof(p.first.get()).value() == "via passed fd");
    sp.first.reset();
    got.clear();
    msg = sys::recv_fds(sp.second.get(), 4096, got);
    REQUIRE(msg);
    CHECK(msg->empty());
    CHECK(got.empty());
}

TEST_CASE("a pty pair carries bytes both ways and names its slave", "[sys]") {
    auto pty = sys::open_pty();
    REQUIRE(pty);
    CHECK(pty->name.rfind("/dev/pts/", 0) == 0);
    struct termios t;
    REQUIRE(tcgetattr(pty->slave.get(), &t) == 0);
    cfmakeraw(&t);
    REQUIRE(tcsetattr(pty->slave.get(), TCSANOW, &t) == 0);
    REQUIRE(sys::write_all(pty->master.get(), "in\x03"));
    char buf[16] = {};
    REQUIRE(read(pty->slave.get(), buf, sizeof buf) == 3);
    CHECK(std::string(buf, 3) == "in\x03");  // raw: ^C is a byte, not a signal
    REQUIRE(sys::write_all(pty->slave.get(), "out"));
    REQUIRE(read(pty->master.get(), buf, sizeof buf) == 3);
    CHECK(std::string(buf, 3) == "out");
}

TEST_CASE("a bind source swapped for a symlink after it was opened binds the original", "[sys]") {
    std::string t = make_tmpdir("bind");
    REQUIRE(sys::mkdir_p(t + "/volume"));
    REQUIRE(sys::write_file(t + "/volume/mine", "container data"));
    REQUIRE(sys::mkdir_p(t + "/secret"));
    REQUIRE(sys::write_file(t + "/secret/shadow", "host only"));
    REQUIRE(sys::mkdir_p(t + "/target"));
    auto src = sys::open_bind_source(t + "/volume");
    REQUIRE(src);
    CHECK(src->directory);
    // The swap: the path now names somewhere else.
    REQUIRE(::rename((t + "/volume").c_str(), (t + "/volume.old").c_str()) == 0);
    REQUIRE(::symlink((t + "/secret").c_str(), (t + "/volume").c_str()) == 0);
    REQUIRE(sys::bind_mount(*src, t + "/target", false, true));
    CHECK(sys::read_file(t + "/target/mine").value_or("") == "container data");
    CHECK_FALSE(sys::exists(t + "/target/shadow"));
    CHECK(::open((t + "/target/new").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600) < 0);  // read-only
    CHECK(errno == EROFS);
    REQUIRE(sys::umount(t + "/target", MNT_DETACH));
    auto gone = sys::open_bind_source(t + "/nothing-here");
    REQUIRE_FALSE(gone);
    CHECK(gone.error().code == ENOENT);
    CHECK(sys::remove_all(t));
}

TEST_CASE("remove_all never reaches through a bind mount of the same filesystem", "[sys]") {
    std::string t = make_tmpdir("rm");
    REQUIRE(sys::mkdir_p(t + "/keep/sub"));
    REQUIRE(sys::write_file(t + "/keep/sub/precious", "data"));
    REQUIRE(sys::mkdir_p(t + "/state/shared/rootfs"));
    REQUIRE(sys::write_file(t + "/state/file", "x"));
    REQUIRE(sys::mount(t + "/keep", t + "/state/shared/rootfs", "", MS_BIND));
    auto r = sys::remove_all(t + "/state");
    CHECK_FALSE(r);
    if (!r) CHECK(r.error().message.find("is a mount point") != std::string::npos);
    CHECK(sys::read_file(t + "/keep/sub/precious").value_or("") == "data");
    REQUIRE(sys::umount(t + "/state/shared/rootfs", MNT_DETACH));
    CHECK(sys::remove_all(t + "/state"));
    CHECK_FALSE(sys::exists(t + "/state"));
    CHECK(sys::remove_all(t));
}

TEST_CASE("file_mappings picks a process's mappings of the named files, whole lines only", "[sys]") {
    std::string maps =
        "55c7ea22000-55c7ee29000 r--p 00000000 fd:00 1234   /usr/bin/qemu-system-x86_64\n"
        "7f6468000000-7f646bedb000 r--p 00000000 00:1f 17     /kernel\n"
        "7f646bedb000-7f646c000000 rw-p 03edb000 00:1f 17     /kernel\n"
        "7f6486600000-7f6486d31000 r--p 00000000 00:1f 18     /initrd.img\n"
        "7f6486e00000-7f6486f00000 r--p 00000000 00:1f 19     /kernel (deleted)\n"
        "7f6487000000-7f6487001000 r--p 00000000 00:1f 20     /kernel.bak\n"
        "7f6488000000-7f6488001000 r--p 00000000 00:1f 21     /a dir/with spaces\n"
        "7f6489000000-7f648a000000 rw-p 00000000 00:00 0 \n"
        "garbage line\n"
        "7f648b000000-7f648a000000 r--p 00000000 00:1f 17     /kernel\n";  // end before start
    auto r = sys::file_mappings(maps, {"/kernel", "/initrd.img", "/a dir/with spaces"});
    REQUIRE(r.size() == 4);
    CHECK(r[0].start == 0x7f6468000000);
    CHECK(r[0].len == 0x7f646bedb000 - 0x7f6468000000);
    CHECK(r[1].start == 0x7f646bedb000);
    CHECK(r[2].start == 0x7f6486600000);
    CHECK(r[2].len == 0x731000);
    CHECK(r[3].start == 0x7f6488000000);
    CHECK(sys::file_mappings(maps, {}).empty());
    CHECK(sys::file_mappings("", {"/kernel"}).empty());
}

// Resident KiB of `pid`'s mappings of `path` (smaps: a mapping's header
// line, "start-end perms offset dev inode path", then "Key: value kB" lines).
static long mapped_rss_kib(pid_t pid, const std::string& path) {
    std::istringstream in(sys::read_file("/proc/" + std::to_string(pid) + "/smaps").value());
    long rss = 0;
    bool mine = false;
    for (std::string line; std::getline(in, line);) {
        std::istringstream f(line);
        std::string first;
        f >> first;
        if (first.find('-') != std::string::npos && first.back() != ':') {
            std::string perms, offset, dev, inode, name;
            f >> perms >> offset >> dev >> inode;
            std::getline(f >> std::ws, name);
            mine = name == path;
        } else if (mine && first == "Rss:") {
            long kib = 0;
            f >> kib;
            rss += kib;
        }
    }
    return rss;
}

TEST_CASE("process_madvise pages out a child's file mapping", "[sys]") {
    // The real call on a real process: a child maps a file and waits.
    auto dir = make_tmpdir();
    std::string file = dir + "/blob";
    REQUIRE(sys::write_file(file, std::string(1 << 20, 'x')));
    REQUIRE(::fsync(sys::open(file, O_RDONLY).value().get()) == 0);  // dirty pages wait for writeback
    auto ready = sys::pipe().value();
    auto hold = sys::pipe().value();
    sys::SpawnOptions o;
    o.fds = {{ready.second.get(), 3}, {hold.first.get(), 4}};
    // python maps it, touches every page, says so and waits for EOF.
    auto pid = sys::spawn({"python3", "-c",
                           "import mmap, os, sys\n"
                           "f = open(sys.argv[1], 'rb'); m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)\n"
                           "s = sum(m[i] for i in range(0, len(m), 4096)); os.write(3, b'r'); os.read(4, 1)\n",
                           file},
                          o);
    REQUIRE(pid);
    ready.second.reset();
    hold.first.reset();
    char c = 0;
    REQUIRE(::read(ready.first.get(), &c, 1) == 1);
    auto ranges = sys::file_mappings(sys::read_file("/proc/" + std::to_string(*pid) + "/maps").value(), {file});
    REQUIRE(ranges.size() == 1);
    CHECK(mapped_rss_kib(*pid, file) == 1024);
    auto fd = sys::pidfd_open(*pid).value();
    auto n = sys::process_madvise(fd.get(), ranges, MADV_PAGEOUT);
    REQUIRE(n);
    CHECK(*n == ranges[0].len);
    CHECK(mapped_rss_kib(*pid, file) == 0);  // clean file pages (ext4 here; tmpfs would need swap)
    hold.second.reset();
    int st = 0;
    ::waitpid(*pid, &st, 0);
    CHECK((WIFEXITED(st) && WEXITSTATUS(st) == 0));
    REQUIRE(sys::remove_all(dir));
}

TEST_CASE("mounts under a directory, from mountinfo, parents first", "[sys]") {
    std::string mi =
        "22 1 0:21 / / rw - ext4 /dev/vda rw\n"
        "40 22 0:40 / /s/m1 rw - tmpfs t rw\n"
        "41 40 0:41 / /s/m1/a/b rw - tmpfs t rw\n"
        "42 40 0:42 / /s/m1/a rw - tmpfs t rw\n"
        "43 40 0:43 / /s/m1/with\\040space rw - tmpfs t rw\n"
        "44 22 0:44 / /s/m10 rw - tmpfs t rw\n";
    CHECK(sys::mounts_under(mi, "/s/m1") == std::vector<std::string>{"a", "with space", "a/b"});
    CHECK(sys::mounts_under(mi, "/s/m10").empty());
}

TEST_CASE("a PATH search finds the first regular executable file, as execvp", "[sys]") {
    std::string t = make_tmpdir("path");
    std::string a = t + "/a", b = t + "/b";
    REQUIRE(sys::mkdir_p(a + "/tool", 0755));  // a directory of the name: not it
    REQUIRE(sys::mkdir_p(b, 0755));
    REQUIRE(sys::write_file(a + "/plain", "x"));  // not executable: not it
    REQUIRE(sys::write_file(b + "/plain", "#!/bin/sh\n"));
    REQUIRE(sys::write_file(b + "/tool", "#!/bin/sh\n"));
    REQUIRE(::chmod((b + "/plain").c_str(), 0755) == 0);
    REQUIRE(::chmod((b + "/tool").c_str(), 0755) == 0);
    CHECK(sys::search_path("tool", a + ":" + b) == b + "/tool");
    CHECK(sys::search_path("plain", a + ":" + b) == b + "/plain");
    CHECK_FALSE(sys::search_path("tool", a));
    CHECK_FALSE(sys::search_path("none", a + ":" + b));
    CHECK(sys::find_program("sh").has_value());
    CHECK(sys::remove_all(t));
}

TEST_CASE("numbers from text: the whole string, in range, or nothing; never an exception", "[numbers]") {
    CHECK(parse_number<uint64_t>("18446744073709551615") == UINT64_MAX);
    CHECK_FALSE(parse_number<uint64_t>("18446744073709551616"));
    CHECK_FALSE(parse_number<uint64_t>("-1"));
    CHECK(parse_number<int64_t>("-5") == -5);
    CHECK_FALSE(parse_number<int>(""));
    CHECK_FALSE(parse_number<int>(" 1"));
    CHECK_FALSE(parse_number<int>("+1"));
    CHECK_FALSE(parse_number<int>("1x"));
    CHECK_FALSE(parse_number<int>("1.5"));
    CHECK_FALSE(parse_number<int>("268435456\n"));  // cgroup files: the caller strips the newline
    CHECK(parse_number<int>("755", 8) == 0755);
    CHECK_FALSE(parse_number<int>("8", 8));
    CHECK(parse_double("1.5") == 1.5);
    CHECK_FALSE(parse_double("1.5s"));
    CHECK_FALSE(parse_double(""));
}
