// The typed contracts that arrive as files or lines the shim and husk read
// back: state.json (written by one husk process, read by every other),
// a checkpoint image's husk-checkpoint.json (a directory the caller
// names), a VM template's seal, the config file (TOML), the agent's
// attach and resumed messages, shim.sock's requests, replies and
// session lines (a local client's bytes, and the shim's), and the reports
// on a shim's or a relay's link to its starter (protocol/creator.h).
// Each decoder either fails as a value or gives a struct that encodes and
// decodes to the same again. And what a system image brings
// (system_image.h): its kernel's boot header or ELF headers and notes,
// its initrd's first bytes, its modules.dep and modules.builtin, read and
// turned into husk's order files.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>

#include "husk/checkpoint.h"
#include "husk/config.h"
#include "husk/state.h"
#include "husk/system_image.h"
#include "husk/vm_template.h"
#include "protocol/control.h"
#include "protocol/creator.h"
#include "protocol/messages.h"

using namespace husk;

// What a decoder took encodes, and decodes again to the same; else abort
// (a round trip that changed the struct).
template <typename Input, typename Decode, typename Encode>
static void round_trips(const Input& in, Decode decode, Encode encode) {
    auto first = decode(in);
    if (!first) return;
    auto again = decode(encode(*first));
    if (!again || encode(*again) != encode(*first)) std::abort();
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string text(reinterpret_cast<const char*>(data), size);
    auto j = nlohmann::json::parse(text, nullptr, false);
    auto to_json = [](const auto& v) { return proto::to_json(v); };
    round_trips(j, state_from_json, state_to_json);
    round_trips(text, checkpoint::info_from_json, checkpoint::info_to_json);
    round_trips(text, templates::seal_from_json, templates::seal_to_json);
    (void)parse_config(text, "fuzz.toml");
    round_trips(j, proto::attach_from_json, to_json);
    round_trips(j, proto::control_request_from_json, to_json);
    round_trips(j, proto::control_reply_from_json, to_json);
    round_trips(j, proto::session_exit_from_json, to_json);
    round_trips(j, proto::resumed_from_json, to_json);
    round_trips(j, proto::report_from_json, to_json);
    // A system image's files: never a crash, a release that is a path, or
    // an order line that is not a module the image has.
    if (auto k = system_image::parse_bzimage(text); k && (k->release.empty() || k->release.find('/') != std::string::npos))
        std::abort();
    size_t cut = text.find('\x01');
    auto image = system_image::parse_module_index(text.substr(0, cut), cut == std::string::npos ? "" : text.substr(cut + 1));
    std::string order;
    for (const auto& [name, m] : image.modules) order += m.first + "\n";
    if (auto r = system_image::rewrite_orders({{"order", order}}, image, "fuzz"))
        for (const auto& n : r->needed)
            if (!image.modules.count(n) || image.builtin.count(n)) std::abort();
    (void)system_image::initramfs_modules(text);
    (void)system_image::initrd_format(text);
    // An ELF vmlinux, read through an fd as from the image.
    static int memfd = ::memfd_create("fuzz-vmlinux", MFD_CLOEXEC);
    if (memfd >= 0 && ::ftruncate(memfd, 0) == 0 && ::pwrite(memfd, text.data(), text.size(), 0) == ssize_t(text.size()))
        if (auto k = system_image::parse_vmlinux(memfd, text.size()); k && (k->release.empty() || !k->elf)) std::abort();
    return 0;
}
