#include "shim/session.h"

#include "husk/log.h"

namespace husk::shim {

using nlohmann::json;

Result<void> Session::feed(const char* data, size_t n) {
    if (failed_) return tl::unexpected(*failed_);
    dec_.feed(data, n);
    for (;;) {
        auto f = dec_.next();
        Result<void> r = f ? (*f ? on_frame(**f) : Result<void>()) : tl::unexpected(f.error());
        if (!r) {
            failed_ = r.error();  // final: nothing more is taken from this guest
            return r;
        }
        if (!*f) return {};
    }
}

uint64_t Session::request(const std::string& method, const json& params, uint64_t client, uint32_t proc) {
    uint64_t id = next_req_++;
    send(proto::encode(proto::Type::Request, 0, proto::to_json(proto::Request{id, method, params}).dump()));
    pending_[id] = Pending{client, method, proc};
    if (client) host_.busy(client);
    return id;
}

void Session::answer_pending(const std::string& method, const proto::ControlReply& r) {
    for (auto it = pending_.begin(); it != pending_.end();) {
        if (it->second.method != method) {
            ++it;
            continue;
        }
        uint64_t client = it->second.client;
        it = pending_.erase(it);
        answer(client, r);
    }
}

void Session::attach(const proto::Attach& a) {
    attach_req_ = request("attach", proto::to_json(a));
    phase = Phase::Attaching;
}

void Session::attach_restored(const proto::Attach& a) {
    send(proto::encode(proto::Type::Hello, 0, proto::to_json(proto::Hello{proto::kVersion}).dump()));
    attach(a);
}

void Session::resume_restored() {
    resume_req_ = request("resume", proto::to_json(proto::Resume{true}));
    phase = Phase::Resuming;
}

void Session::restart_boot() {
    dec_ = proto::Decoder();
    failed_.reset();
    pending_.clear();
    out.clear();
    create_req_ = attach_req_ = 0;
    if (channel) channel = proto::SendCredit(channel->window());
    phase = Phase::Booting;
}

void Session::forget_client(uint64_t client) {
    for (auto& [id, pd] : pending_)
        if (pd.client == client) pd.client = 0;
}

void Session::answer(uint64_t client, const proto::ControlReply& r) {
    if (client) host_.reply(client, r);
}

void Session::answer(uint64_t client, bool ok, const std::string& err) { answer(client, status_reply(ok, err)); }

proto::ControlReply status_reply(bool ok, const std::string& err) { return ok ? proto::ControlReply{} : proto::refused(err); }

Result<void> Session::on_frame(const proto::Frame& f) {
    using proto::Type;
    auto proc_of = [&](uint32_t stream) -> Proc* {
        auto it = procs.find(proto::stream_process(stream));
        return it == procs.end() || !it->second.started ? nullptr : &it->second;
    };
    switch (f.type) {
        case Type::Hello: {
            if (phase != Phase::Booting) return fail("unexpected HELLO from agent", EPROTO);
            auto h = TRY_CTX(proto::decode<proto::Hello>(json::parse(f.payload, nullptr, false), "hello"), "agent");
            if (h.version != proto::kVersion)
                return fail("agent speaks protocol " + std::to_string(h.version) + ", shim speaks " + std::to_string(proto::kVersion),
                            EPROTO);
            send(proto::encode(Type::Hello, 0, proto::to_json(proto::Hello{proto::kVersion}).dump()));
            if (h.template_boot) {
                log::debug("agent said hello (a template)");
                attach(TRY(host_.template_hello()));
                return {};
            }
            host_.booted();
            create_req_ = request("create", proto::to_json(host_.create_params()));
            phase = Phase::Creating;
            log::debug("agent said hello");
            return {};
        }
        case Type::Response: {
            return on_response(TRY_CTX(proto::decode<proto::Response>(json::parse(f.payload, nullptr, false), "response"),
                                       "agent"));
        }
        case Type::Event: {
            return on_event(TRY_CTX(proto::decode<proto::ExitEvent>(json::parse(f.payload, nullptr, false), "event"), "agent"));
        }
        case Type::Data: {
            uint32_t fd = proto::stream_fd(f.stream);
            Proc* p = proc_of(f.stream);
            if (!p || !p->out.count(fd)) return fail("data on unknown stream " + std::to_string(f.stream), EPROTO);
            auto& o = p->out[fd];
            if (o.eof) return fail("data after close on stream " + std::to_string(f.stream), EPROTO);
            // The agent may never exceed the credit we granted.
            if (o.data.size() + f.payload.size() > proto::kInitialCredit)
                return fail("agent overran its credit on stream " + std::to_string(f.stream), EPROTO);
            if (o.dead) send(proto::encode_credit(f.stream, uint32_t(f.payload.size())));
            else o.data += f.payload;
            return {};
        }
        case Type::Credit: {
            uint32_t c = TRY(proto::decode_credit(f));
            if (f.stream == proto::kChannelStream) {
                if (!channel) return fail("agent returned channel credit it was not given", EPROTO);
                return channel->give_back(c);
            }
            Proc* p = proc_of(f.stream);
            if (!p) return {};
            auto in = p->in.find(proto::stream_fd(f.stream));
            if (in == p->in.end()) return {};
            return in->second.credit.give_back(c);
        }
        case Type::Close: {
            uint32_t fd = proto::stream_fd(f.stream);
            Proc* p = proc_of(f.stream);
            if (!p) return fail("close on unknown stream " + std::to_string(f.stream), EPROTO);
            // The guest's end of a two-way stream closes both ways: its
            // output ends, and nobody reads what we would send.
            bool known = false;
            if (auto o = p->out.find(fd); o != p->out.end()) o->second.eof = known = true;
            if (auto in = p->in.find(fd); in != p->in.end()) {
                if (!p->out.count(fd)) in->second.open = false;  // reader gone
                known = true;
            }
            if (!known) return fail("close on unknown stream " + std::to_string(f.stream), EPROTO);
            return {};
        }
        case Type::Request:
            return fail("agent sent a request", EPROTO);
    }
    return {};
}

Result<void> Session::on_response(const proto::Response& r) {
    uint64_t id = r.id;
    auto it = pending_.find(id);
    if (it == pending_.end()) return fail("response to unknown request " + std::to_string(id), EPROTO);
    Pending pd = it->second;
    pending_.erase(it);
    bool ok = r.ok;
    const std::string& err = r.error;
    if (id == attach_req_) {
        if (phase != Phase::Attaching) return fail("unexpected answer to attach", EPROTO);
        if (!ok) return fail("attach the template's guest: " + err, EIO);
        log::debug("agent attached");
        host_.booted();
        create_req_ = request("create", proto::to_json(host_.create_params()));
        phase = Phase::Creating;
        return {};
    }
    if (id == resume_req_) {
        if (phase != Phase::Resuming) return fail("unexpected answer to resume", EPROTO);
        if (!ok) return fail("resume the checkpoint's guest: " + err, EIO);
        auto res = TRY(proto::resumed_from_json(r.result.value_or(json())));
        TRY(host_.resumed(res));
        phase = Phase::Running;
        procs[0].started = true;
        log::debug("agent resumed from the checkpoint");
        host_.running();
        return {};
    }
    if (id == create_req_) {
        if (!ok) {
            host_.created(false, "create container in guest: " + err);
            return fail("create container in guest: " + err, EINVAL);
        }
        if (phase != Phase::Creating) return fail("unexpected answer to create", EPROTO);
        phase = Phase::Created;
        host_.created(true, "");
        return {};
    }
    if (pd.method == "start" && ok && pd.proc == 0 && phase == Phase::Created) {
        phase = Phase::Running;
        procs[0].started = true;
        host_.running();
    }
    host_.answered(pd.method, pd.proc, ok);
    // An exec, or a container that joins the sandbox (its init waits for
    // start): the process exists once the agent says so.
    if (pd.method == "exec" || (pd.method == "create" && pd.proc != 0)) {
        auto p = procs.find(pd.proc);
        if (!ok) {
            procs.erase(pd.proc);
            answer(pd.client, false, err);
            return {};
        }
        if (p == procs.end()) return {};
        // Its streams are live from now: a member's init killed before
        // start still closes them and reports its exit.
        p->second.started = true;
        auto pid = proto::decode<proto::Spawned>(r.result.value_or(json()), pd.method);
        if (!pid) return fail("agent: " + pid.error().message, EPROTO);
        answer(pd.client, proto::ControlReply{.pid = pid->pid});
        return {};
    }
    if ((pd.method == "ps" || pd.method == "stats") && ok) {
        answer(pd.client, proto::ControlReply{.result = r.result.value_or(json::array())});
        return {};
    }
    answer(pd.client, ok, err);
    return {};
}

Result<void> Session::on_event(const proto::ExitEvent& e) {
    auto it = procs.find(e.process);
    if (it == procs.end() || !it->second.started || it->second.exited)
        return fail("exit event for unknown process " + std::to_string(e.process), EPROTO);
    auto& p = it->second;
    p.sig = e.signal;
    p.code = e.code;
    p.exited = true;
    log::debug("process exited: " + proto::to_json(e).dump());
    if (p.idx == 0) {
        phase = Phase::Exiting;
        exit_deadline = Clock::now() + std::chrono::seconds(5);
    }
    return {};
}

}  // namespace husk::shim
