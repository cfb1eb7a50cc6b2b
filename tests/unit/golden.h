// Golden files: compare against tests/unit/golden/<name>; with
// HUSK_UPDATE_GOLDEN=1 the file is rewritten instead (review the diff).
#pragma once
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "husk/sandbox.h"

inline std::string golden_path(const std::string& name) { return std::string(HUSK_GOLDEN_DIR) + "/" + name; }

inline std::string read_text(const std::string& path) {
    std::ifstream f(path);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

// An argv as a golden file: one word per line.
inline std::string lines(const std::vector<std::string>& v) {
    std::string s;
    for (auto& x : v) s += x + "\n";
    return s;
}

// A container's state dir as the shim passes it to make_vm_config.
inline husk::SandboxPaths state_sandbox_paths(const std::string& dir = "/state/c1") {
    return {dir + "/shared", dir + "/vmm/agent.sock", dir + "/vmm/qmp.sock", dir + "/vmm/vsock.sock",
            dir + "/vmm/fs.sock", dir + "/vmm/vsock-vhost.sock"};
}

inline void check_golden(const std::string& name, const std::string& actual) {
    std::string path = golden_path(name);
    if (const char* u = std::getenv("HUSK_UPDATE_GOLDEN"); u && std::string(u) == "1") {
        std::ofstream(path) << actual;
        return;
    }
    INFO("golden file " << path << " (HUSK_UPDATE_GOLDEN=1 to regenerate)");
    REQUIRE(read_text(path) == actual);
}
