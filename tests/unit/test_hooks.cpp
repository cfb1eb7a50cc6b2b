#include <unistd.h>

#include <chrono>

#include <catch2/catch.hpp>

#include "husk/hooks.h"
#include "sys/sys.h"
#include "tmpdir.h"

using namespace husk;

static SpecHook sh(const std::string& script, std::vector<std::string> env = {}, int timeout = 0) {
    return SpecHook{"/bin/sh", {"sh", "-c", script}, std::move(env), timeout};
}

TEST_CASE("hooks parse with JSON paths", "[hooks]") {
    auto h = parse_hooks(nlohmann::json::parse(R"({"prestart":[{"path":"/a","args":["a","1"],"env":["X=1"],"timeout":5}],
                                                  "poststop":[{"path":"/b"}]})"));
    REQUIRE(h);
    CHECK(h->at("prestart").at(0).args == std::vector<std::string>{"a", "1"});
    CHECK(h->at("prestart").at(0).timeout == 5);
    CHECK(h->at("poststop").at(0).path == "/b");
    CHECK(parse_hooks(nullptr).value().empty());
    auto bad = parse_hooks(nlohmann::json::parse(R"({"poststart":[{"args":["x"]}]})"));
    REQUIRE_FALSE(bad);
    CHECK(bad.error().message == "config.json: hooks.poststart[0].path: required");
}

TEST_CASE("a hook gets the state on stdin, its own env, and its failure says why", "[hooks]") {
    std::string dir = make_tmpdir("hook");
    nlohmann::json state = {{"id", "c1"}, {"status", "creating"}};
    setenv("HUSK_HOOK_TEST_LEAK", "1", 1);
    REQUIRE(run_hooks({sh("/bin/cat > " + dir + "/state; /usr/bin/env > " + dir + "/env", {"FOO=bar"})},
                      "prestart", state));
    unsetenv("HUSK_HOOK_TEST_LEAK");
    CHECK(nlohmann::json::parse(sys::read_file(dir + "/state").value()) == state);
    auto env = sys::read_file(dir + "/env").value();
    CHECK(env.find("FOO=bar\n") != std::string::npos);
    CHECK(env.find("HUSK_HOOK_TEST_LEAK") == std::string::npos);  // nothing of ours is inherited

    auto r = run_hooks({sh("echo first >&2; exit 4"), sh("touch " + dir + "/second")}, "createRuntime", state);
    REQUIRE_FALSE(r);
    CHECK(r.error().message == "createRuntime hook /bin/sh: exit status 4: first");
    CHECK_FALSE(sys::exists(dir + "/second"));  // the first failure stops the rest

    auto t0 = std::chrono::steady_clock::now();
    r = run_hooks({sh("exec /bin/sleep 30", {}, 1)}, "prestart", state);
    REQUIRE_FALSE(r);
    CHECK(r.error().message == "prestart hook /bin/sh: timed out after 1s");
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10));

    r = run_hooks({SpecHook{"/nonexistent/hook", {}, {}, 0}}, "poststop", state);
    REQUIRE_FALSE(r);
    CHECK(r.error().message == "poststop hook /nonexistent/hook: exec /nonexistent/hook: No such file or directory");
    (void)sys::remove_all(dir);
}

TEST_CASE("the whole state is in the hook's stdin before it runs; one that never reads is fine", "[hooks]") {
    std::string dir = make_tmpdir("hook");
    // Larger than a default pipe: it must still arrive whole.
    nlohmann::json state = {{"id", "c1"}, {"pad", std::string(200000, 'x')}};
    REQUIRE(run_hooks({sh("/bin/cat > " + dir + "/state")}, "prestart", state));
    CHECK(sys::read_file(dir + "/state").value() == state.dump());
    // Hooks that exit at once without reading: never a write to a gone reader.
    for (int i = 0; i < 20; ++i) CHECK(run_hooks({SpecHook{"/bin/true", {}, {}, 0}}, "poststop", state));
    (void)sys::remove_all(dir);
}
