// What Firecracker and Cloud Hypervisor share: a VMM process that serves a
// REST API on a unix socket it creates, configured by a list of calls and
// paused/resumed by more. Their drivers are the translation (a pure
// VmConfig -> calls function, golden-tested) plus this.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "husk/hypervisor.h"
#include "hypervisors/http.h"
#include "hypervisors/process_vm.h"

namespace husk {

struct ApiCall {
    std::string method;
    std::string path;
    nlohmann::json body;  // null: no body
};
// All calls as one JSON document (the golden files).
nlohmann::json calls_to_json(const std::vector<ApiCall>& calls);

// Make one call; a status other than 2xx is an error naming the call and
// carrying the VMM's own message (Firecracker's fault_message, Cloud
// Hypervisor's text).
Result<http::Response> api_call(const std::string& socket, const ApiCall& call, int timeout_ms = 5000);
// The VMM's message in an error response body. Pure.
std::string api_error_message(const std::string& body);

// Where a REST-API VMM writes a template's snapshot and reads it back:
// a directory in its working directory (the jail's /vmm), which holds
// only that, and only while it saves or restores.
inline constexpr const char* kSnapshotDirName = "template";
inline constexpr const char* kJailSnapshotDir = "/vmm/template";
// A template's disks while it has none of a container's (Capabilities::
// template_disks): an empty file there, made at launch.
inline constexpr const char* kPlaceholderDiskName = "placeholder.img";
inline constexpr const char* kJailPlaceholderDisk = "/vmm/placeholder.img";

// A driver's template calls (Capabilities::templates). A VM saves by
// `save` (pause, snapshot into kJailSnapshotDir) and then runs on
// (ApiVmmLaunch::resume); the files it wrote are the template, packed
// into one (pack_snapshot). A restore unpacks them there and makes
// `restore` instead of ApiVmmLaunch::calls; then the guest runs, and gets
// `shares[i]`, `nics[i]` and `disks[i]` (in place of the placeholder) as
// the container asks for them.
struct ApiTemplateCalls {
    std::vector<ApiCall> save;
    std::vector<ApiCall> restore;
    std::vector<ApiCall> shares, nics, disks;
};

struct ApiVmmLaunch {
    std::string name;                 // "firecracker": error prefix
    std::vector<std::string> argv;    // argv[0] is the binary
    std::string socket;               // the API socket, relative to workdir
    std::vector<ApiCall> calls;       // configure and boot
    ApiCall pause, resume;
    // Save and restore (a template's, or a checkpoint's: Vm::checkpoint);
    // the device calls are a template's alone.
    ApiTemplateCalls tmpl;
};

class ApiVm : public ProcessVm {
public:
    ApiVm(pid_t pid, std::string socket, std::string snapshot_dir, const ApiVmmLaunch& l)
        : ProcessVm(pid), socket_(std::move(socket)), snapshot_dir_(std::move(snapshot_dir)), pause_(l.pause),
          resume_(l.resume), tmpl_(l.tmpl) {}
    Result<void> pause() override;
    Result<void> resume() override;
    Result<void> save_template(int fd) override;
    Result<void> checkpoint(int fd) override;
    // The restore ran the guest already (launch_api_vmm): its channel is
    // the VMM's to bridge, which a paused guest could not answer.
    Result<void> run_restored() override { return {}; }
    Result<void> add_share(size_t index) override;
    Result<void> add_nic(size_t index) override;
    Result<void> add_disk(size_t index) override;

private:
    std::string socket_, snapshot_dir_;
    ApiCall pause_, resume_;
    ApiTemplateCalls tmpl_;
};

// A REST-API driver's Hypervisor::template_shape: `tag` (its name and
// shape version), the calls `translate` makes of `cfg` as the jail shows
// it (the same for every container of the shape: sockets and taps by
// name), and the files the VM runs.
std::string api_template_shape(const std::string& tag, const VmConfig& cfg, const std::string& binary,
                               std::vector<ApiCall> (*translate)(const VmConfig&));
// ... and its Hypervisor::vm_shape: the calls without the kernel command
// line (a booted guest does not read it again), and the VMM binary.
std::string api_vm_shape(const std::string& tag, const VmConfig& cfg, const std::string& binary,
                         std::vector<ApiCall> (*translate)(const VmConfig&));

// A snapshot directory's regular files as one stream to `fd` (what the
// template store keeps), and back: `fd` (read from its start) unpacked
// into `dir`, which exists and is empty. A stream that is not one packed
// here, or names a file with a '/' in it, is an error.
Result<void> pack_snapshot(const std::string& dir, int fd);
Result<void> unpack_snapshot(int fd, const std::string& dir);

// Where a REST-API VMM's jail puts its log (the rest: jail.h).
inline constexpr const char* kApiJailLog = "/vmm.log";

// Spawn the VMM jailed, in `workdir`/vmm (stdout: the guest serial
// console, stderr: `log_path`), wait for its API socket, make the calls
// (`l`, planned with jailed_config). Any failure kills the VMM; its
// message ends with the tail of its log.
Result<std::unique_ptr<Vm>> launch_api_vmm(const ApiVmmLaunch& l, const VmConfig& cfg, const std::string& workdir,
                                           const std::string& log_path);

// What both REST-API drivers are: KVM only, the channel over hybrid vsock,
// no shared directories (the rootfs goes on a disk), the uncompressed
// vmlinux. A driver names itself, says why it cannot run, and plans.
class ApiHypervisor : public Hypervisor {
public:
    Capabilities capabilities() const override;  // checkpoint: yes (the snapshot calls), with vm_shape
    std::string guest_kernel() const override;
    Result<std::unique_ptr<Vm>> launch(const VmConfig& cfg, const std::string& workdir,
                                       const std::string& log_path) override;

protected:
    virtual ApiVmmLaunch plan(const VmConfig& cfg, const std::string& log_path) const = 0;
};

// The binary `name` (env `env` overrides): its path, or "".
std::string find_vmm_binary(const char* env, const char* name);
// Why a KVM-only VMM cannot run here ("" when it can): `binary` missing,
// no usable /dev/kvm.
std::string kvm_vmm_unavailable(const std::string& binary, const char* package_hint);

}  // namespace husk
