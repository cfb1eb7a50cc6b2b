#include <catch2/catch.hpp>

#include "guest-agent/procfs.h"
#include "husk/ps.h"

using namespace husk;
using nlohmann::json;

namespace {
// Two processes as the agent reports them; `now` is the same day as the
// first's start and a later day than the second's.
// (Through the decoder the host reads the agent's answer with.)
const std::vector<proto::PsProcess> kProcs = *proto::decode<std::vector<proto::PsProcess>>(json::parse(R"([
  {"pid": 1, "ppid": 0, "uid": 0, "user": "root", "state": "S", "stat": "Ss", "cmd": "sh -c sleep 1000",
   "comm": "sh", "tty": "?", "start": 1764626400, "cpu": 3725.4, "pcpu": 0.5, "pmem": 0.25, "vsz": 1664, "rss": 980},
  {"pid": 7, "ppid": 1, "uid": 1000, "user": "", "state": "R", "stat": "R+", "cmd": "[kworker]",
   "comm": "kworker", "tty": "pts/0", "start": 1764540000, "cpu": 61.0, "pcpu": 12.0, "pmem": 1.5, "vsz": 0, "rss": 0}
])"), "ps");
time_t now() { return 1764626400 + 3600; }
}  // namespace

TEST_CASE("husk ps prints ps's own columns, -ef by default", "[ps]") {
    setenv("TZ", "UTC", 1);
    tzset();
    auto ef = format_ps(kProcs, {}, now());
    REQUIRE(ef);
    CHECK(*ef ==
          "UID        PID  PPID  C STIME TTY          TIME CMD\n"
          "root         1     0  0 22:00 ?        01:02:05 sh -c sleep 1000\n"
          "1000         7     1 12 Nov30 pts/0    00:01:01 [kworker]\n");
    CHECK(*format_ps(kProcs, {"-e", "-f"}, now()) == *ef);
    CHECK(*format_ps(kProcs, {"-e"}, now()) ==
          "  PID TTY          TIME CMD\n"
          "    1 ?        01:02:05 sh\n"
          "    7 pts/0    00:01:01 kworker\n");
    CHECK(*format_ps(kProcs, {"aux"}, now()) ==
          "USER       PID %CPU %MEM    VSZ   RSS TTY      STAT START   TIME COMMAND\n"
          "root         1  0.5  0.2   1664   980 ?        Ss   22:00  62:05 sh -c sleep 1000\n"
          "1000         7 12.0  1.5      0     0 pts/0    R+   Nov30   1:01 [kworker]\n");
    CHECK(format_ps(kProcs, {"ax"}, now())->rfind("  PID TTY      STAT   TIME COMMAND\n    1 ?        Ss     62:05 sh", 0) == 0);
    for (const char* bad : {"-o", "-ef --forest", "aux -e", "-"}) {
        INFO(bad);
        std::vector<std::string> opts;
        std::string b = bad;
        for (size_t p = 0; p <= b.size();) {
            size_t e = b.find(' ', p);
            if (e == std::string::npos) e = b.size();
            opts.push_back(b.substr(p, e - p));
            p = e + 1;
        }
        CHECK_FALSE(format_ps(kProcs, opts, now()));
    }
}

TEST_CASE("the agent reads /proc as ps does", "[ps]") {
    auto f = agent::stat_fields("42 (a b) c) S 1 42 42 34816 42 4194560 0 0 0 0 7 3 0 0 20 0 1 0 12345 1703936 245\n");
    REQUIRE(f.size() >= 22);
    CHECK(f[0] == "S");
    CHECK(f[3] == "42");
    CHECK(f[11] == "7");
    CHECK(f[19] == "12345");
    CHECK(agent::tty_name(0) == "?");
    CHECK(agent::tty_name((136 << 8) | 3) == "pts/3");
    CHECK(agent::tty_name((4 << 8) | 1) == "tty1");
    CHECK(agent::tty_name((4 << 8) | 64) == "ttyS0");
    CHECK(agent::status_field("Name:\tsh\nUid:\t1000\t1000\t1000\t1000\n", "Uid") == "1000\t1000\t1000\t1000");
    CHECK(agent::status_field("Name:\tsh\nUid:\t1000\n", "Name") == "sh");  // the first line too
    CHECK(agent::status_field("Name:\tsh\n", "Nam").empty());
    CHECK(agent::status_field("MemTotal:     1000 kB\n", "MemTotal") == "1000 kB");
}
