"""The subset of Kubernetes' CRI (runtime.v1) that the pod tests drive,
over containerd's gRPC socket: protobuf encoded and decoded by hand (field
numbers from k8s.io/cri-api's api.proto), sent with python3-grpcio."""
import grpc

SERVICE = "/runtime.v1.RuntimeService/"

# ContainerState
CREATED, RUNNING, EXITED = 0, 1, 2


def _varint(n):
    out = b""
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(num, value):
    """One field: str/bytes and dict/list-of-fields as length-delimited,
    int/bool as varint; None and empty values are left out."""
    if value is None or value == "" or value == b"" or value is False or value == 0:
        return b""
    if isinstance(value, bool) or isinstance(value, int):
        return _varint(num << 3) + _varint(int(value))
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, (list, tuple)):
        value = b"".join(value)
    return _varint(num << 3 | 2) + _varint(len(value)) + value


def message(*fields):
    return b"".join(fields)


def repeated(num, values):
    return b"".join(field(num, v) for v in values)


def string_map(num, d):
    return b"".join(field(num, message(field(1, k), field(2, v))) for k, v in sorted(d.items()))


def decode(data):
    """{field number: [values]}: varints as int, the rest as bytes."""
    out, i = {}, 0
    while i < len(data):
        key, i = _read_varint(data, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _read_varint(data, i)
        elif wt == 2:
            n, i = _read_varint(data, i)
            v, i = data[i:i + n], i + n
        elif wt == 1:
            v, i = data[i:i + 8], i + 8
        elif wt == 5:
            v, i = data[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wt}")
        out.setdefault(num, []).append(v)
    return out


def _read_varint(data, i):
    n = shift = 0
    while True:
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def first(d, num, default=None):
    return d.get(num, [default])[0]


class Runtime:
    def __init__(self, sock):
        self.channel = grpc.insecure_channel(f"unix://{sock}")

    def call(self, method, request, timeout=240):
        f = self.channel.unary_unary(SERVICE + method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        return decode(f(request, timeout=timeout))

    def sandbox_config(self, name, uid, log_dir):
        return message(field(1, message(field(1, name), field(2, uid), field(3, "default"))),  # PodSandboxMetadata
                       field(2, name),  # hostname
                       field(3, log_dir))

    def run_pod_sandbox(self, config, handler):
        return first(self.call("RunPodSandbox", message(field(1, config), field(2, handler))), 1).decode()

    def pod_ip(self, pod):
        status = decode(first(self.call("PodSandboxStatus", field(1, pod)), 1))
        return first(decode(first(status, 5, b"")), 1, b"").decode()  # status.network.ip

    def create_container(self, pod, sandbox_config, name, image, command, log_path=""):
        config = message(field(1, message(field(1, name))),  # ContainerMetadata
                         field(2, message(field(1, image))),  # ImageSpec
                         repeated(3, command),
                         field(11, log_path))
        return first(self.call("CreateContainer", message(field(1, pod), field(2, config), field(3, sandbox_config))),
                     1).decode()

    def start_container(self, cid):
        self.call("StartContainer", field(1, cid))

    def exec_sync(self, cid, cmd, timeout=60):
        r = self.call("ExecSync", message(field(1, cid), repeated(2, cmd), field(3, timeout)))
        return first(r, 1, b""), first(r, 2, b""), first(r, 3, 0)

    def container_status(self, cid):
        s = decode(first(self.call("ContainerStatus", field(1, cid)), 1))
        return first(s, 3, CREATED), first(s, 7, 0)  # state, exit_code

    def stop_pod_sandbox(self, pod):
        self.call("StopPodSandbox", field(1, pod))

    def remove_pod_sandbox(self, pod):
        self.call("RemovePodSandbox", field(1, pod))
