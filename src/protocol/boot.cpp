#include "protocol/boot.h"

#include <cerrno>
#include <sstream>

namespace husk::proto {

std::string to_cmdline(const BootParams& b) {
    std::string out;
    auto word = [&](const char* key, const std::string& value) {
        if (!value.empty()) out += std::string(" husk.") + key + "=" + value;
    };
    word("debug", b.debug ? "1" : "");
    word("probe", b.probe ? "1" : "");
    word("template", b.template_boot ? "1" : "");
    word("vmm", b.vmm);
    word("channel", b.channel);
    word("share", b.share);
    word("net", b.net ? "1" : "");
    word("mem", b.mem ? "1" : "");
    word("hostfs", b.hostfs);
    return out;
}

Result<BootParams> boot_params_from_cmdline(const std::string& cmdline) {
    BootParams b;
    std::istringstream words(cmdline);
    for (std::string w; words >> w;) {
        if (w.rfind("husk.", 0) != 0) continue;
        size_t eq = w.find('=');
        std::string key = w.substr(5, eq == std::string::npos ? std::string::npos : eq - 5);
        std::string value = eq == std::string::npos ? "" : w.substr(eq + 1);
        auto bad = [&](const std::string& why) { return fail("kernel command line: " + w + ": " + why, EINVAL); };
        auto flag = [&](bool& out) -> Result<void> {
            if (value != "1") return bad("expected 1");
            out = true;
            return {};
        };
        auto one_of = [&](std::string& out, std::initializer_list<const char*> allowed) -> Result<void> {
            for (const char* a : allowed)
                if (value == a) {
                    out = value;
                    return {};
                }
            return bad("not a value husk writes");
        };
        if (key == "debug") TRY(flag(b.debug));
        else if (key == "probe") TRY(flag(b.probe));
        else if (key == "template") TRY(flag(b.template_boot));
        else if (key == "net") TRY(flag(b.net));
        else if (key == "mem") TRY(flag(b.mem));
        else if (key == "share") TRY(one_of(b.share, {"virtiofs", "disk"}));
        else if (key == "vmm") TRY(one_of(b.vmm, {"uml", "firecracker", "cloud-hypervisor"}));
        else if (key == "channel") {
            bool tty = value.size() > 3 && value.rfind("tty", 0) == 0 &&
                       value.find_first_not_of("0123456789", 3) == std::string::npos;
            if (tty) b.channel = value;
            else TRY(one_of(b.channel, {"serial", "vsock"}));
        } else if (key == "hostfs") {
            if (value.empty() || value[0] != '/') return bad("expected an absolute path");
            b.hostfs = value;
        } else {
            return bad("not a word husk writes");
        }
    }
    return b;
}

}  // namespace husk::proto
