// The UML driver's pure parts, the driver choice, and the VMM jail (run
// for real: a jailed child must not see the host).
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>

#include "golden.h"
#include "husk/config.h"
#include "husk/sandbox.h"
#include "hypervisors/jail.h"
#include "hypervisors/uml/mconsole.h"
#include "hypervisors/uml/uml.h"
#include "sys/sys.h"
#include "tmpdir.h"

using namespace husk;

TEST_CASE("VmConfig -> UML command line (golden)", "[uml]") {
    auto spec = parse_spec(R"({"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": ["true"], "cwd": "/"},
                              "linux": {"resources": {"memory": {"limit": 67108864}}}})");
    REQUIRE(spec);
    HostFacts host;
    host.host_cpus = 4, host.kernel = "/usr/bin/linux.uml", host.initrd = "/img/initramfs.img";
    NetInterface eth0;
    eth0.name = "eth0", eth0.mac = "02:42:ac:11:00:02";
    VmConfig cfg = make_vm_config(*spec, host, state_sandbox_paths(), {eth0},
                                  {"tap1_husk"});
    cfg.console_fd = 7;
    cfg.disks.push_back({"/img/disk.raw", true});
    check_golden("translate/uml.argv", lines(uml::translate(jailed_config(cfg))));

    // A probe-style VM: no channel, so no line and no husk.channel.
    cfg.channel.kind = ChannelKind::None;
    cfg.shares.clear();
    auto argv = uml::translate(cfg);
    CHECK(std::none_of(argv.begin(), argv.end(), [](auto& a) { return a.rfind("con1=", 0) == 0 || a.rfind("husk.channel", 0) == 0 || a.rfind("husk.hostfs", 0) == 0; }));
}

TEST_CASE("mconsole: request layout and reply checks", "[uml]") {
    auto r = uml::mconsole_request("stop");
    REQUIRE(r);
    // The kernel's struct mconsole_request (arch/um/include/shared/
    // mconsole.h), spelled out: MCONSOLE_MAGIC, MCONSOLE_VERSION 2, the
    // length, then MCONSOLE_MAX_DATA (512) bytes of command.
    REQUIRE(r->size() == 12 + 512);
    CHECK(r->substr(0, 12) == std::string("\xbe\xba\xfe\xca\x02\0\0\0\x04\0\0\0", 12));
    CHECK(r->substr(12, 5) == std::string("stop\0", 5));
    CHECK(uml::mconsole_request(std::string(511, 'x')));
    CHECK_FALSE(uml::mconsole_request(std::string(512, 'x')));

    uint32_t ok[3] = {0, 0, 2};
    std::string reply(reinterpret_cast<char*>(ok), sizeof ok);
    reply += "hi";
    auto p = uml::mconsole_parse_reply(reply.data(), reply.size());
    REQUIRE(p);
    CHECK(p->data == "hi");
    CHECK_FALSE(p->more);
    // A length past the datagram, or a datagram shorter than the header,
    // is refused rather than read beyond.
    uint32_t lying[3] = {0, 0, 400};
    std::string bad(reinterpret_cast<char*>(lying), sizeof lying);
    bad += "short";
    CHECK_FALSE(uml::mconsole_parse_reply(bad.data(), bad.size()));
    CHECK_FALSE(uml::mconsole_parse_reply(bad.data(), 5));
}

TEST_CASE("a jailed process sees only what its jail names", "[uml][jail]") {
    REQUIRE(::geteuid() == 0);  // the unit suite runs as root (scripts/test)
    auto busybox = sys::find_program("busybox");
    REQUIRE(busybox);
    REQUIRE(busybox->rfind("/usr/", 0) == 0);  // what the jail shows of the host is /usr
    std::string dir = make_tmpdir("jail");
    REQUIRE(sys::mkdir_p(dir + "/root", 0700));
    REQUIRE(sys::mkdir_p(dir + "/served", 0755));
    REQUIRE(sys::write_file_atomic(dir + "/served/inside", "shared\n", 0644));
    REQUIRE(sys::write_file_atomic(dir + "/secret", "host only\n", 0600));

    Jail j = base_jail(dir + "/root");
    j.mounts.push_back({dir + "/served", "/share", false, true});
    j.keep_caps = file_server_caps();
    sys::SpawnOptions o;
    auto out = sys::open(dir + "/out", O_WRONLY | O_CREAT | O_TRUNC, 0600);
    REQUIRE(out);
    o.fds = {{out->get(), 1}, {out->get(), 2}};
    o.cwd = "/";
    jail_spawn(j, o);
    // What it sees at /, its pid, the served file, the host's file through
    // every path that could lead there, and its bounding set.
    std::string script =
        "ls / | tr '\\n' ' '; echo; echo pid=$$; cat /share/inside; "
        "cat " + dir + "/secret 2>/dev/null || echo no-secret; "
        "cat /share/../../" + dir.substr(1) + "/secret 2>/dev/null || echo no-dotdot; "
        "cat /proc/1/root" + dir + "/secret 2>/dev/null || echo no-proc-root; "
        "(echo x > /written) 2>/dev/null || echo root-ro; "
        "grep CapBnd /proc/self/status";
    auto pid = sys::spawn({*busybox, "sh", "-c", script}, o);
    REQUIRE(pid);
    out->reset();
    int st = 0;
    REQUIRE(::waitpid(*pid, &st, 0) == *pid);
    auto text = sys::read_file(dir + "/out");
    REQUIRE(text);
    INFO(*text);
    CHECK(WIFEXITED(st));
    CHECK(text->find("bin dev lib lib64 proc sbin share tmp usr \n") == 0);
    CHECK(text->find("pid=2\n") != std::string::npos);  // pid 1 is the jail's reaper
    CHECK(text->find("shared\n") != std::string::npos);
    CHECK(text->find("host only") == std::string::npos);
    CHECK(text->find("no-secret\nno-dotdot\nno-proc-root\nroot-ro\n") != std::string::npos);
    // CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID MKNOD = bits 0-4, 27.
    CHECK(text->find("CapBnd:\t000000000800001f") != std::string::npos);
    // The host still sees the jail's root empty: nothing was mounted here.
    CHECK(sys::read_file("/proc/self/mountinfo")->find(dir) == std::string::npos);
    REQUIRE(sys::remove_all(dir));
}

TEST_CASE("config file: the default driver, strictly", "[config]") {
    auto c = parse_config("# husk\nhypervisor = \"uml\"\n", "/etc/husk/config.toml");
    REQUIRE(c);
    CHECK(c->hypervisor == "uml");
    CHECK(parse_config("", "x")->hypervisor.empty());
    auto bad = parse_config("hypervisor = 3\n", "c.toml");
    REQUIRE_FALSE(bad);
    CHECK(bad.error().message.rfind("c.toml:1: not a string or a bool", 0) == 0);
    bad = parse_config("hypervsior = \"uml\"\n", "c.toml");
    REQUIRE_FALSE(bad);
    CHECK(bad.error().message == "c.toml: unknown key \"hypervsior\"");
    bad = parse_config("hypervisor = \n", "c.toml");
    REQUIRE_FALSE(bad);
    CHECK(bad.error().message.rfind("c.toml:1:", 0) == 0);
    // A subset of TOML, checked before toml++ 3.3 (which aborts or reaches
    // unreachable code on some of these) sees the text.
    for (auto [text, why] : std::vector<std::pair<std::string, std::string>>{
             {"[{", "a table"},
             {"hypervisor = \"uml\"\n  [[[1]]]\n", "a table"},
             {"[husk]\nshare = \"9p\"\n", "a table"},
             {"hB=[[[[[[[[[}[[{\"[-----[[[---!t-.1 (", "not a string or a bool"},
             {"share = \"9p", "an unterminated string"},
             {"share = \"9p\" x", "more after the value"},
             {"= 1", "not a key"},
             {"share \"9p\"", "no '=' after the key"},
             {"\xef\xbb\xbf", "a byte 239"},
             {"share = \"9p\"\n# \xc3\xa9t\xc3\xa9\n", "a byte 195"},
             {std::string("a\0b", 3), "a byte 0"}}) {
        bad = parse_config(text, "c.toml");
        REQUIRE_FALSE(bad);
        CHECK(bad.error().message.find(why) != std::string::npos);
        CHECK(bad.error().message.find("husk's config takes key = \"text\"") != std::string::npos);
    }
    // What it takes: strings (escapes, either quote), bools, comments, blank lines.
    auto good = parse_config("# husk\n\n  hypervisor = 'uml'  # the default\r\nshare=\"9\\u0070\"\ntemplates = false\n", "c.toml");
    REQUIRE(good);
    CHECK(good->hypervisor == "uml");
    CHECK(good->share == "9p");
    CHECK(good->templates == std::optional<bool>(false));
}

TEST_CASE("UML keeps the guest tty from throttling: a stdin window under n_tty's 4 KiB", "[uml]") {
    // line_throttle drops UML's input interrupt for good (see docs/design.md).
    auto w = uml::UmlHypervisor().capabilities().stdin_window;
    CHECK(w > 0);
    CHECK(w < 4096 - 128);  // n_tty throttles with under 128 bytes of room
}
