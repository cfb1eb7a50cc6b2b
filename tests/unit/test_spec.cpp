#include <dirent.h>

#include <algorithm>
#include <vector>

#include "golden.h"
#include "husk/spec.h"

using namespace husk;

static std::vector<std::string> list(const std::string& dir, const std::string& ext) {
    std::vector<std::string> out;
    if (DIR* d = opendir(dir.c_str())) {
        while (auto* e = readdir(d)) {
            std::string n = e->d_name;
            if (n.size() > ext.size() && n.compare(n.size() - ext.size(), ext.size(), ext) == 0) out.push_back(n);
        }
        closedir(d);
    }
    std::sort(out.begin(), out.end());
    return out;
}

TEST_CASE("good configs parse", "[spec]") {
    auto files = list(golden_path("spec/good"), ".json");
    REQUIRE(files.size() >= 3);
    for (auto& f : files) {
        INFO(f);
        auto s = parse_spec(read_text(golden_path("spec/good/" + f)));
        REQUIRE(s.has_value());
        REQUIRE(s->process.has_value());
    }
}

TEST_CASE("bad configs fail with the JSON path in the message", "[spec]") {
    // Each bad/X.json has bad/X.err: the exact error line expected.
    auto files = list(golden_path("spec/bad"), ".json");
    REQUIRE(files.size() >= 10);
    for (auto& f : files) {
        INFO(f);
        auto s = parse_spec(read_text(golden_path("spec/bad/" + f)));
        REQUIRE_FALSE(s.has_value());
        std::string err = read_text(golden_path("spec/bad/" + f.substr(0, f.size() - 5) + ".err"));
        while (!err.empty() && err.back() == '\n') err.pop_back();
        REQUIRE(s.error().message == err);
    }
}

TEST_CASE("spec fields are read", "[spec]") {
    auto s = parse_spec(R"({"ociVersion":"1.0.2","root":{"path":"rootfs","readonly":true},
        "process":{"args":["sh","-c","x"],"cwd":"/w","env":["A=1"],"user":{"uid":5,"gid":6,"additionalGids":[7,8],"umask":18}},
        "hostname":"h","mounts":[{"destination":"/d","type":"bind","source":"/s","options":["ro"]}],
        "annotations":{"k":"v"},"unknownKey":{"nested":[1,2]},
        "linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/var/run/netns/x"}],
                 "resources":{"memory":{"limit":268435456},"cpu":{"quota":150000,"period":100000}}}})");
    REQUIRE(s);
    CHECK(s->root_readonly);
    CHECK(s->process->args == std::vector<std::string>{"sh", "-c", "x"});
    CHECK(s->process->user.uid == 5);
    CHECK(s->process->user.gid == 6);
    CHECK(s->process->user.additional_gids == std::vector<uint32_t>{7, 8});
    CHECK(s->process->user.umask == 18u);
    CHECK(s->hostname == "h");
    CHECK(s->mounts.at(0).is_bind());
    CHECK(s->annotations.at("k") == "v");
    CHECK(s->has_namespace("pid"));
    CHECK(s->namespaces.at(1).path == "/var/run/netns/x");
    CHECK(*s->memory_limit == 268435456);
    CHECK(*s->cpu_quota == 150000);
}

TEST_CASE("runc's default spec round-trips through the parser", "[spec]") {
    auto s = parse_spec(default_spec().dump());
    REQUIRE(s);
    CHECK(s->process->terminal);
    CHECK(s->mounts.size() == 7);
    CHECK(s->root_path == "rootfs");
}

TEST_CASE("rootfs path is relative to the bundle unless absolute", "[spec]") {
    Spec s;
    s.root_path = "rootfs";
    CHECK(rootfs_path("/b", s) == "/b/rootfs");
    s.root_path = "/abs";
    CHECK(rootfs_path("/b", s) == "/abs");
}

TEST_CASE("an exec process file is parsed alone, its errors named by the file", "[spec]") {
    auto p = parse_process_file(R"({"args":["ls","-l"],"cwd":"/tmp","env":["A=1"],"terminal":true,
                                    "consoleSize":{"height":24,"width":80},"user":{"uid":7}})", "proc.json");
    REQUIRE(p);
    CHECK(p->args == std::vector<std::string>{"ls", "-l"});
    CHECK(p->cwd == "/tmp");
    CHECK(p->terminal);
    CHECK(p->console_height == 24);
    CHECK(p->console_width == 80);
    CHECK(p->user.uid == 7);
    auto bad = parse_process_file(R"({"args":"ls","cwd":"/"})", "proc.json");
    REQUIRE_FALSE(bad);
    CHECK(bad.error().message == "proc.json: args: expected array, got string");
    bad = parse_process_file(R"({"args":["ls"],"cwd":"rel"})", "p.json");
    REQUIRE_FALSE(bad);
    CHECK(bad.error().message == "p.json: cwd: must be an absolute path, got \"rel\"");
    bad = parse_process_file("[1]", "p.json");
    REQUIRE_FALSE(bad);
    CHECK(bad.error().message == "p.json: $: expected object, got array");
    CHECK_FALSE(parse_process_file("{", "p.json"));
}

TEST_CASE("husk --annotation KEY=VALUE: checked, under the bundle's own", "[spec]") {
    auto a = parse_annotation_args({"org.husk.kernel=/boot/vmlinuz", "org.husk.stdio=console", "empty=", "eq=a=b"});
    REQUIRE(a);
    CHECK(a->at("org.husk.kernel") == "/boot/vmlinuz");
    CHECK(a->at("empty").empty());
    CHECK(a->at("eq") == "a=b");
    for (const char* bad : {"novalue", "=value", ""}) {
        auto r = parse_annotation_args({bad});
        REQUIRE_FALSE(r);
        CHECK(r.error().message == std::string("--annotation ") + bad + ": expected KEY=VALUE");
    }
    Spec s;
    s.annotations["org.husk.stdio"] = "init";
    add_annotations(s, *a);
    CHECK(s.annotations.at("org.husk.stdio") == "init");  // the bundle's own
    CHECK(s.annotations.at("org.husk.kernel") == "/boot/vmlinuz");
}
