// What the guest sends the shim: any byte sequence, cut anywhere. The
// decoder must bound memory, never crash, and stay dead after an error;
// payloads the shim reads (HELLO, RESPONSE, EVENT JSON; CREDIT) must
// parse or fail as values. The first byte picks the chunk size.
#include <cstddef>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "husk/network.h"
#include "protocol/messages.h"
#include "protocol/protocol.h"

using namespace husk;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return 0;
    size_t chunk = size_t(data[0] % 64) + 1;
    ++data, --size;
    proto::Decoder dec;
    bool dead = false;
    for (size_t off = 0; off < size && !dead; off += chunk) {
        dec.feed(reinterpret_cast<const char*>(data) + off, std::min(chunk, size - off));
        for (;;) {
            auto f = dec.next();
            if (!f) {
                dead = true;
                if (dec.next()) __builtin_trap();  // errors are sticky
                break;
            }
            if (!*f) break;
            const auto& fr = **f;
            if (fr.payload.size() > proto::kMaxPayload) __builtin_trap();
            switch (fr.type) {
                case proto::Type::Credit:
                    (void)proto::decode_credit(fr);
                    break;
                case proto::Type::Hello:
                case proto::Type::Response:
                case proto::Type::Event: {
                    auto j = nlohmann::json::parse(fr.payload, nullptr, false);
                    if (j.is_object() && j.contains("network")) (void)interfaces_from_json(j["network"]);
                    // The attach decoder (the agent's side of a typed
                    // message): a value or an error, and what it accepts
                    // encodes back to what it decodes from.
                    if (auto a = proto::attach_from_json(j.is_object() && j.contains("params") ? j["params"] : j)) {
                        auto again = proto::attach_from_json(proto::to_json(*a));
                        if (!again || again->entropy != a->entropy || again->vcpus != a->vcpus) __builtin_trap();
                    }
                    break;
                }
                default:
                    break;
            }
        }
        if (dec.buffered() > proto::kHeaderSize + proto::kMaxPayload + chunk) __builtin_trap();
    }
    return 0;
}
