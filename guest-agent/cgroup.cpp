#include "guest-agent/cgroup.h"

#include <fcntl.h>
#include <linux/bpf.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <sstream>

#include "guest-agent/procfs.h"
#include "sys/sys.h"

namespace husk::agent {

using nlohmann::json;

Result<void> init_cgroups() {
    TRY(sys::mkdir_p(kCgroupRoot, 0755));
    TRY(sys::mount("cgroup2", kCgroupRoot, "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, "nsdelegate"));
    std::string have = TRY(sys::read_file(std::string(kCgroupRoot) + "/cgroup.controllers"));
    std::istringstream in(have);
    std::string c;
    while (in >> c)  // one at a time: a controller the kernel refuses does not block the rest
        (void)sys::write_file(std::string(kCgroupRoot) + "/cgroup.subtree_control", "+" + c);
    return {};
}

static Result<std::string> file_path(const std::string& dir, const std::string& n) {
    if (n.empty() || n.find('/') != std::string::npos || n[0] == '.') return fail("bad cgroup file name " + n, EINVAL);
    return dir + "/" + n;
}

std::string container_cgroup_dir(uint32_t init) {
    return init == 0 ? std::string(kContainerCgroup) : std::string(kContainerCgroup) + "-" + std::to_string(init);
}

Result<void> write_cgroup_files(const std::string& dir, const CgroupFiles& files) {
    for (const auto& [name, value] : files) {
        std::string path = TRY(file_path(dir, name));
        if (auto r = sys::write_file(path, value); !r) {
            std::string why = r.error().code == ENOENT ? "not supported by the guest kernel" : std::strerror(r.error().code);
            return fail("cgroup " + name + " = " + value + ": " + why, r.error().code);
        }
    }
    return {};
}

proto::CgroupStats read_cgroup_files(const std::string& dir, const std::vector<std::string>& names) {
    proto::CgroupStats out;
    for (const auto& n : names) {
        auto path = file_path(dir, n);
        if (!path) continue;
        if (auto t = sys::read_file(*path, 1 << 16)) out[n] = *t;
    }
    return out;
}

namespace {

uint64_t insn(uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm) {
    struct bpf_insn i;
    std::memset(&i, 0, sizeof i);
    i.code = code;
    i.dst_reg = dst & 0xf;
    i.src_reg = src & 0xf;
    i.off = off;
    i.imm = imm;
    uint64_t raw;
    static_assert(sizeof raw == sizeof i);
    std::memcpy(&raw, &i, sizeof raw);
    return raw;
}

uint64_t ld_ctx(uint8_t dst, int16_t off) { return insn(BPF_LDX | BPF_MEM | BPF_W, dst, 1, off, 0); }
uint64_t alu_k(uint8_t op, uint8_t dst, int32_t imm) { return insn(BPF_ALU | op | BPF_K, dst, 0, 0, imm); }
uint64_t jne(uint8_t dst, int32_t imm) { return insn(BPF_JMP | BPF_JNE | BPF_K, dst, 0, 0, imm); }  // off patched
uint64_t ret(int32_t v) { return insn(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, v); }
uint64_t exit_insn() { return insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0); }

bool is_jump(uint64_t raw) {
    struct bpf_insn i;
    std::memcpy(&i, &raw, sizeof i);
    return BPF_CLASS(i.code) == BPF_JMP && BPF_OP(i.code) != BPF_EXIT;
}

void set_off(uint64_t& raw, int16_t off) {
    struct bpf_insn i;
    std::memcpy(&i, &raw, sizeof i);
    i.off = off;
    std::memcpy(&raw, &i, sizeof i);
}

}  // namespace

std::vector<uint64_t> device_program(const std::vector<proto::DeviceRule>& rules) {
    // r2 = device type, r3 = access bits, r4 = major, r5 = minor
    // (struct bpf_cgroup_dev_ctx: access_type = type | access << 16).
    std::vector<uint64_t> p = {ld_ctx(2, 0), alu_k(BPF_AND, 2, 0xffff), ld_ctx(3, 0), alu_k(BPF_RSH, 3, 16),
                               ld_ctx(4, 4), ld_ctx(5, 8)};
    // First match wins, so the last rule is checked first.
    for (auto it = rules.rbegin(); it != rules.rend(); ++it) {
        const proto::DeviceRule& r = *it;
        std::vector<uint64_t> b;
        const std::string& type = r.type;
        if (type == "c") b.push_back(jne(2, BPF_DEVCG_DEV_CHAR));
        else if (type == "b") b.push_back(jne(2, BPF_DEVCG_DEV_BLOCK));
        int32_t acc = 0;
        for (char c : r.access)
            acc |= c == 'r' ? BPF_DEVCG_ACC_READ : c == 'w' ? BPF_DEVCG_ACC_WRITE : c == 'm' ? BPF_DEVCG_ACC_MKNOD : 0;
        if (acc != (BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE | BPF_DEVCG_ACC_MKNOD)) {
            // Matches only if every requested bit is one the rule names.
            b.push_back(insn(BPF_ALU | BPF_MOV | BPF_X, 1, 3, 0, 0));
            b.push_back(alu_k(BPF_AND, 1, ~acc));
            b.push_back(jne(1, 0));
        }
        if (r.major >= 0) b.push_back(jne(4, int32_t(r.major)));
        if (r.minor >= 0) b.push_back(jne(5, int32_t(r.minor)));
        size_t body = b.size();
        b.push_back(ret(r.allow ? 1 : 0));
        b.push_back(exit_insn());
        for (size_t i = 0; i < body; ++i)  // each test jumps to the next rule
            if (is_jump(b[i])) set_off(b[i], int16_t(b.size() - i - 1));
        p.insert(p.end(), b.begin(), b.end());
        // A rule that matches everything (a deny-all, typically) decides
        // alone: earlier rules could never be reached, and the verifier
        // refuses unreachable code.
        if (body == 0) return p;
    }
    p.push_back(ret(0));
    p.push_back(exit_insn());
    return p;
}

Result<sys::Fd> load_device_program(const std::vector<proto::DeviceRule>& rules) {
    auto prog = device_program(rules);
    static char log[16384];
    union bpf_attr load;
    std::memset(&load, 0, sizeof load);
    load.prog_type = BPF_PROG_TYPE_CGROUP_DEVICE;
    load.insns = uint64_t(uintptr_t(prog.data()));
    load.insn_cnt = uint32_t(prog.size());
    load.license = uint64_t(uintptr_t("Apache"));
    load.log_buf = uint64_t(uintptr_t(log));
    load.log_size = sizeof log;
    load.log_level = 1;
    int pfd = int(::syscall(SYS_bpf, BPF_PROG_LOAD, &load, sizeof load));
    if (pfd < 0) return fail_errno(std::string("load device filter: ") + log);
    return sys::Fd(pfd);
}

static Result<void> attach_device_filter(int cgroup_fd, const std::vector<proto::DeviceRule>& rules) {
    auto prog_fd = TRY(load_device_program(rules));
    union bpf_attr at;
    std::memset(&at, 0, sizeof at);
    at.target_fd = uint32_t(cgroup_fd);
    at.attach_bpf_fd = uint32_t(prog_fd.get());
    at.attach_type = BPF_CGROUP_DEVICE;
    at.attach_flags = BPF_F_ALLOW_MULTI;
    if (::syscall(SYS_bpf, BPF_PROG_ATTACH, &at, sizeof at) < 0) return fail_errno("attach device filter");
    return {};
}

Result<sys::Fd> create_container_cgroup(const std::string& dir, const CgroupFiles& files,
                                        const std::vector<proto::DeviceRule>& device_rules) {
    if (::mkdir(dir.c_str(), 0755) < 0 && errno != EEXIST) return fail_errno("mkdir " + dir);
    TRY(write_cgroup_files(dir, files));
    auto fd = TRY(sys::open(dir, O_RDONLY | O_DIRECTORY));
    TRY(attach_device_filter(fd.get(), device_rules));
    return fd;
}

void remove_container_cgroup(const std::string& dir) {
    if (auto names = sys::list_dir(dir))
        for (const auto& n : *names)
            if (sys::is_dir(dir + "/" + n)) remove_container_cgroup(dir + "/" + n);
    // Its processes are being killed: the group empties within moments.
    for (int i = 0; i < 100 && ::rmdir(dir.c_str()) < 0 && errno == EBUSY; ++i) ::usleep(10000);
}

Result<sys::Fd> open_process_cgroup(pid_t pid, const std::string& dir) {
    std::string text = TRY(sys::read_file("/proc/" + std::to_string(pid) + "/cgroup", 64 << 10));
    auto path = cgroup_path(text);  // (from the agent's root)
    if (!path) return fail("process " + std::to_string(pid) + ": no cgroup v2 group", ENOENT);
    if (!in_cgroup(text, dir.substr(std::strlen(kCgroupRoot))))
        return fail("process " + std::to_string(pid) + " has left its container's cgroup (" + *path + ")", EPERM);
    return sys::open(kCgroupRoot + *path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

}  // namespace husk::agent
