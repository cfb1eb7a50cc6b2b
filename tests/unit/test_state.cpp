#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <functional>
#include <sstream>

#include <catch2/catch.hpp>

#include "husk/paths.h"
#include "husk/state.h"
#include "sys/sys.h"
#include "tmpdir.h"

using namespace husk;

namespace {
struct TempRoot {
    std::string path;
    TempRoot() : path(make_tmpdir("state")) {}
    ~TempRoot() { (void)sys::remove_all(path); }
};
}  // namespace

TEST_CASE("state paths all live under <root>/<id>", "[state]") {
    auto p = state_paths("/run/husk", "web");
    CHECK(p.dir == "/run/husk/web");
    CHECK(p.state_json == "/run/husk/web/state.json");
    CHECK(p.shim_sock == "/run/husk/web/shim.sock");
    CHECK(p.shared == "/run/husk/web/shared");
}

TEST_CASE("container ids follow runc's rule", "[state]") {
    CHECK(validate_id("web-1_a.b+c"));
    for (const char* bad : {"", ".", "..", "a/b", "a b", "../x", "x\n"}) {
        INFO(bad);
        CHECK_FALSE(validate_id(bad));
    }
}

TEST_CASE("state round-trips atomically", "[state]") {
    TempRoot t;
    auto p = state_paths(t.path, "c1");
    REQUIRE(sys::mkdir_p(p.dir));
    State s;
    s.id = "c1";
    s.bundle = "/b";
    s.status = status::kCreated;
    s.pid = getpid();
    s.pid_start = sys::proc_start_time(getpid()).value();
    s.exit_code = 3;
    s.annotations["k"] = "v";
    s.netns = "/run/netns/n1";
    s.net_links = {"eth0"};
    s.net_taps = {"tap0_husk"};
    REQUIRE(write_state(p, s));
    CHECK_FALSE(sys::exists(p.state_json + ".tmp"));
    auto r = read_state(p);
    REQUIRE(r);
    CHECK(r->id == "c1");
    CHECK(r->exit_code == 3);
    CHECK(r->annotations.at("k") == "v");
    CHECK(r->netns == "/run/netns/n1");  // delete cleans redirects a killed shim left there
    CHECK(r->net_links == std::vector<std::string>{"eth0"});
    CHECK(r->net_taps == std::vector<std::string>{"tap0_husk"});  // and the persistent taps
    CHECK(effective_status(*r) == status::kCreated);
    auto j = oci_state(*r);
    CHECK(j["ociVersion"] == "1.0.2");
    CHECK(j["pid"] == getpid());
    CHECK(j["status"] == "created");
}

TEST_CASE("a container whose shim is gone is stopped, pid 0", "[state]") {
    pid_t child = fork();
    if (child == 0) _exit(0);
    auto start = sys::proc_start_time(child).value_or(1);
    waitpid(child, nullptr, 0);
    State s;
    s.id = "x";
    s.status = status::kRunning;
    s.pid = child;
    s.pid_start = start;
    CHECK(effective_status(s) == status::kStopped);
    CHECK(oci_state(s)["pid"] == 0);
    // Same pid, different start time: a reused pid is not our shim.
    s.pid = getpid();
    s.pid_start = 1;
    CHECK(effective_status(s) == status::kStopped);
}

TEST_CASE("a zombie counts as dead", "[state]") {
    pid_t child = fork();
    if (child == 0) _exit(0);
    auto start = sys::proc_start_time(child).value_or(0);
    siginfo_t si{};
    REQUIRE(waitid(P_PID, id_t(child), &si, WEXITED | WNOWAIT) == 0);  // exited, not reaped
    CHECK_FALSE(sys::process_alive(child, start));
    waitpid(child, nullptr, 0);
}

TEST_CASE("corrupt state is an error, not a crash", "[state]") {
    TempRoot t;
    auto p = state_paths(t.path, "c1");
    REQUIRE(sys::mkdir_p(p.dir));
    REQUIRE(sys::write_file(p.state_json, "{not json"));
    CHECK_FALSE(read_state(p));
    REQUIRE(sys::write_file(p.state_json, R"({"id": 5})"));
    CHECK_FALSE(read_state(p));
}

TEST_CASE("state.json is decoded strictly: every key, its type, its range", "[state]") {
    State s;
    s.id = "c1";
    s.bundle = "/b";
    s.pid = 42;
    s.exit_signal = 9;
    s.sandbox = "pod";
    s.net_taps = {"tap0_husk"};  // (a tap without a link: still a network entry to decode)
    nlohmann::json good = state_to_json(s);
    auto back = state_from_json(good);
    REQUIRE(back);
    CHECK(state_to_json(*back) == good);
    auto why = [&](const std::function<void(nlohmann::json&)>& edit) {
        nlohmann::json j = good;
        edit(j);
        auto r = state_from_json(j);
        return r ? std::string("decoded") : r.error().message;
    };
    CHECK(why([](auto& j) { j["pid"] = 2.5e58; }) == "corrupt state: pid: not an integer in range");  // (fuzz_files)
    CHECK(why([](auto& j) { j["pid"] = -1; }) == "corrupt state: pid: not an integer in range");
    CHECK(why([](auto& j) { j["pid"] = "42"; }) == "corrupt state: pid: not an integer in range");
    CHECK(why([](auto& j) { j["exit_signal"] = 4096; }) == "corrupt state: exit_signal: not an integer in range");
    CHECK(why([](auto& j) { j.erase("owner"); }) == "corrupt state: missing owner");
    CHECK(why([](auto& j) { j["ownre"] = ""; }) == "corrupt state: unknown key ownre");
    CHECK(why([](auto& j) { j["annotations"]["a"] = 1; }) == "corrupt state: annotations.a: not a string");
    CHECK(why([](auto& j) { j["cgroups"] = {"/a", 2}; }) == "corrupt state: cgroups: not a string");
    CHECK(why([](auto& j) { j["network"]["x"] = 1; }) == "corrupt state: network: unknown key x");
    CHECK(why([](auto& j) { j["status"] = nullptr; }) == "corrupt state: status: not a string");
}

TEST_CASE("the lock serialises and notices deletion", "[state]") {
    TempRoot t;
    auto p = state_paths(t.path, "c1");
    auto missing = ContainerLock::acquire(p);
    REQUIRE_FALSE(missing);
    CHECK(missing.error().code == ENOENT);

    REQUIRE(sys::mkdir_p(p.dir));
    int ready[2];
    REQUIRE(pipe(ready) == 0);
    pid_t child = fork();
    if (child == 0) {
        // Hold the lock, then delete the container while holding it.
        auto l = ContainerLock::acquire(p);
        if (!l) _exit(1);
        (void)!write(ready[1], "x", 1);
        // Until the parent is blocked on this lock: /proc/locks lists a
        // waiter as "N: -> FLOCK ADVISORY WRITE <pid> <dev>:<inode> ...".
        struct stat st{};
        if (stat(p.dir.c_str(), &st) < 0) _exit(1);
        std::string waiter = "FLOCK  ADVISORY  WRITE " + std::to_string(getppid()) + " ";
        std::string inode = ":" + std::to_string(st.st_ino) + " ";
        for (int i = 0;; ++i) {
            auto locks = sys::read_file("/proc/locks").value_or("");
            std::istringstream lines(locks);
            bool blocked = false;
            for (std::string l; std::getline(lines, l);)
                blocked = blocked || (l.find("-> ") != std::string::npos && l.find(waiter) != std::string::npos &&
                                      l.find(inode) != std::string::npos);
            if (blocked) break;
            if (i > 10000) _exit(2);  // 10 s: the parent never waited
            usleep(1000);
        }
        rmdir(p.dir.c_str());
        _exit(0);
    }
    char c;
    REQUIRE(read(ready[0], &c, 1) == 1);
    // We block until the holder is done, then find the container gone.
    auto l = ContainerLock::acquire(p);
    REQUIRE_FALSE(l);
    CHECK(l.error().code == ENOENT);
    int st;
    waitpid(child, &st, 0);
    CHECK(WEXITSTATUS(st) == 0);
    close(ready[0]);
    close(ready[1]);
}

TEST_CASE("--root defaults to /run/husk, or $XDG_RUNTIME_DIR/husk when rootless (runc's rule)", "[state]") {
    setenv("XDG_RUNTIME_DIR", "/run/user/1000", 1);
    CHECK_FALSE(rootless());  // the test runs as the host's root
    CHECK(default_state_root() == "/run/husk");
    // In a fresh user namespace we are nobody until mapped: rootless.
    int fds[2];
    REQUIRE(pipe(fds) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        std::string r = unshare(CLONE_NEWUSER) == 0 ? default_state_root() : "unshare failed";
        (void)!write(fds[1], r.data(), r.size());
        _exit(0);
    }
    close(fds[1]);
    char buf[256] = {};
    (void)!read(fds[0], buf, sizeof buf - 1);
    close(fds[0]);
    waitpid(pid, nullptr, 0);
    CHECK(std::string(buf) == "/run/user/1000/husk");
    unsetenv("XDG_RUNTIME_DIR");
    CHECK(default_state_root() == "/run/husk");
}

TEST_CASE("husk state prints runc's keys in runc's order", "[state]") {
    State s;
    s.id = "web";
    s.bundle = "/b";
    s.rootfs = "/b/rootfs";
    s.status = status::kStopped;
    s.created = "2026-12-01T00:00:00.000000000Z";
    s.owner = "root";
    // runc's containerState: annotations only when there are some.
    CHECK(runc_state(s).dump() ==
          R"({"ociVersion":"1.0.2","id":"web","pid":0,"status":"stopped","bundle":"/b","rootfs":"/b/rootfs",)"
          R"("created":"2026-12-01T00:00:00.000000000Z","owner":"root"})");
    s.annotations = {{"b", "2"}, {"a", "1"}};
    CHECK(runc_state(s).dump().find(R"("created":"2026-12-01T00:00:00.000000000Z","annotations":{"a":"1","b":"2"},"owner":"root"})") !=
          std::string::npos);
}
