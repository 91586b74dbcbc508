//! Network egress of `container` sandboxes, for real: the test builds its own "internet" (a
//! network namespace on `198.18.0.0/15`, with an HTTP server and a DNS server answering for
//! `inet.test`) routed from the host, and checks what a sandbox reaches with `egress: none`,
//! `all` and `allow` (TLS server names and HTTP hosts inspected), what it never reaches, and
//! that nothing is left afterwards. Needs root,
//! `ip` and `nft` (CI installs nftables); skips with a message otherwise. On a host running
//! Docker (CI starts it), its `FORWARD` policy is part of the run.
#![cfg(all(target_os = "linux", feature = "container"))]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use traforato_core::backend::container::{
    ContainerBackend, ContainerConfig, NetworkSettings, DEFAULT_BLOCKED,
};
use traforato_core::backend::{run_collected, ExecSpec, ProvisionSpec, Vm, VmBackend};
use traforato_core::id::LocalVmId;
use traforato_core::network::Policy;
use traforato_core::tuple::SandboxTuple;

/// A DNS server for the test internet: every `*.test` name is `ADDR`, anything else NXDOMAIN.
const DNS_SERVER: &str = r#"
import socket, sys
addr = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, 53))
while True:
    q, peer = s.recvfrom(512)
    i, name = 12, []
    while q[i]:
        name.append(q[i + 1:i + 1 + q[i]].decode()); i += 1 + q[i]
    question = q[12:i + 5]
    known = ".".join(name).lower().endswith(".test") and q[i + 1:i + 3] == b"\x00\x01"
    flags = b"\x81\x80" if known else b"\x81\x83"
    answer = (b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + socket.inet_aton(addr)) if known else b""
    s.sendto(q[:2] + flags + b"\x00\x01" + (b"\x00\x01" if known else b"\x00\x00") + b"\x00\x00\x00\x00" + question + answer, peer)
"#;

/// A stand-in for a TLS server of the test internet on port 443: it answers whatever it is
/// sent first (a ClientHello) with one line, then echoes what follows.
const TLS_STAND_IN: &str = r#"
import socketserver, sys
class Answer(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.recv(4096)
        self.request.sendall(b"reached 443\n")
        while True:
            b = self.request.recv(4096)
            if not b:
                break
            self.request.sendall(b)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer((sys.argv[1], 443), Answer).serve_forever()
"#;

/// A sink of the test internet on port 9000: reads a connection to its end, answers how many
/// bytes came.
const SINK: &str = r#"
import socketserver, sys
class Count(socketserver.BaseRequestHandler):
    def handle(self):
        n = 0
        while True:
            b = self.request.recv(65536)
            if not b:
                break
            n += len(b)
        self.request.sendall(str(n).encode())
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer((sys.argv[1], 9000), Count).serve_forever()
"#;

/// The test internet: a namespace with `198.18.<k>.2`, reached from the host over a veth
/// whose host end is `198.18.<k>.1`.
struct Internet {
    name: String,
    host_if: String,
    addr: String,
    servers: Vec<Child>,
}

impl Internet {
    fn start() -> Option<Self> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping: needs root (runs in CI as root)");
            return None;
        }
        for program in ["ip", "nft", "python3"] {
            if Command::new("sh")
                .args(["-c", &format!("command -v {program}")])
                .output()
                .map_or(true, |o| !o.status.success())
            {
                eprintln!("skipping: needs {program} (scripts/test installs nftables)");
                return None;
            }
        }
        let k = 1 + rand::random::<u8>() % 250;
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("tfinet-{}", &tag[..8]);
        let host_if = format!("ti{}", &tag[..8]);
        let addr = format!("198.18.{k}.2");
        let sh = |script: &str| {
            let ok = Command::new("sh")
                .args(["-ec", script])
                .status()
                .unwrap()
                .success();
            assert!(ok, "{script}");
        };
        sh(&format!(
            "ip netns add {name}\n\
             ip link add {host_if} type veth peer name inet0 netns {name}\n\
             ip addr add 198.18.{k}.1/30 dev {host_if}\n\
             ip link set {host_if} up\n\
             ip -n {name} addr add {addr}/30 dev inet0\n\
             ip -n {name} link set inet0 up\n\
             ip -n {name} link set lo up\n"
        ));
        let site = tempfile::tempdir().unwrap().keep();
        std::fs::write(site.join("index.html"), "hello from the test internet\n").unwrap();
        std::fs::write(site.join("big"), vec![b'x'; 512 * 1024]).unwrap();
        let python = |args: &[&str]| {
            Command::new("ip")
                .args(["netns", "exec", &name, "python3"])
                .args(args)
                .current_dir(&site)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        let servers = vec![
            python(&["-m", "http.server", "--bind", &addr, "8080"]),
            python(&["-m", "http.server", "--bind", &addr, "80"]),
            python(&["-c", TLS_STAND_IN, &addr]),
            python(&["-c", SINK, &addr]),
            python(&["-c", DNS_SERVER, &addr]),
        ];
        let internet = Self {
            name,
            host_if,
            addr,
            servers,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in [8080, 80, 443, 9000] {
            while std::net::TcpStream::connect((internet.addr.as_str(), port)).is_err() {
                assert!(Instant::now() < deadline, "the test internet's port {port}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Some(internet)
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "delete", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// A sandbox of the `host` image, 1 cpu, 256 MiB.
fn host_sandbox() -> ProvisionSpec {
    ProvisionSpec {
        vm_id: LocalVmId::new_random(),
        tuple: SandboxTuple::normalize("container", "host", 1, "container"),
        memory_mib: 256,
        warm: false,
    }
}

/// Runs Python in the sandbox and returns its stdout, trimmed.
async fn python(vm: &Arc<dyn Vm>, code: &str) -> String {
    let spec = ExecSpec {
        timeout: Duration::from_secs(20),
        ..ExecSpec::program(traforato_core::backend::Program::Argv(vec![
            "python3".into(),
            "-c".into(),
            code.into(),
        ]))
    };
    let ran = run_collected(vm.as_ref(), spec).await.expect("exec");
    String::from_utf8_lossy(&ran.stdout).trim().to_string()
}

/// Fetches `url` from the sandbox: its body, or `failed: <why>`.
fn fetch(url: &str) -> String {
    format!(
        "import urllib.request\n\
         try:\n    print(urllib.request.urlopen({url:?}, timeout=2).read().decode().strip())\n\
         except Exception as e:\n    print('failed:', type(e).__name__)"
    )
}

/// Pings `host` once from the sandbox: `pong` or `failed: <why>`.
fn ping(host: &str) -> String {
    format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP); s.settimeout(2)\n\
         s.sendto(bytes([8, 0, 0, 0, 0, 0, 0, 1]) + b'ping', ({host:?}, 0))\n\
         try:\n    print('pong' if s.recvfrom(100)[0][0] == 0 else 'not an echo reply')\n\
         except Exception as e:\n    print('failed:', type(e).__name__)"
    )
}

/// Connects to `host:port` from the sandbox: `connected` or `failed: <why>`.
fn connect(host: &str, port: u16) -> String {
    format!(
        "import socket\n\
         try:\n    socket.create_connection(({host:?}, {port}), timeout=1); print('connected')\n\
         except Exception as e:\n    print('failed:', type(e).__name__)"
    )
}

/// Python: `hello(name)`, the bytes of a TLS ClientHello for `name` (none for `None`).
const HELLO: &str = "import socket, ssl, time\n\
    def hello(name):\n    \
        c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE\n    \
        i, o = ssl.MemoryBIO(), ssl.MemoryBIO(); t = c.wrap_bio(i, o, server_hostname=name)\n    \
        try:\n        t.do_handshake()\n    \
        except ssl.SSLWantReadError:\n        pass\n    \
        return o.read()\n";

/// Sends `data` (a Python bytes expression; `hello(name)` is a TLS ClientHello whose server
/// name is `name`, or none for `None`) to `host:port` from the sandbox: the first line of the
/// answer, or `failed: <why>` (a refused connection is reset, or closed unanswered).
fn send(host: &str, port: u16, data: &str) -> String {
    format!(
        "{HELLO}\
         try:\n    s = socket.create_connection(({host:?}, {port}), timeout=2); s.sendall({data})\n    \
             print(s.recv(200).decode().split('\\n')[0].strip() or 'failed: closed')\n\
         except Exception as e:\n    print('failed:', type(e).__name__)"
    )
}

#[tokio::test]
async fn egress_none_reaches_nothing_and_all_reaches_the_internet_but_never_the_host() {
    let Some(internet) = Internet::start() else {
        return;
    };
    let settings = NetworkSettings {
        dns_upstream: Some(format!("{}:53", internet.addr).parse().unwrap()),
        // The test internet lives in the benchmarking range, blocked by default.
        blocked: DEFAULT_BLOCKED
            .iter()
            .filter(|range| **range != "198.18.0.0/15")
            .map(|range| range.to_string())
            .collect(),
        // The test internet is reached through its veth, not the default route.
        uplink: Some(internet.host_if.clone()),
        ..NetworkSettings::default()
    };
    let config = ContainerConfig {
        python_zygote: false,
        network: settings.clone(),
        ..ContainerConfig::for_tests("egress", env!("CARGO_BIN_EXE_traforato-sandbox-init"))
    };
    let state_dir = config.state_dir.clone();
    let tag = config.cgroup_parent.clone();
    let forwarding_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let backend = Arc::new(ContainerBackend::new(config).expect("container backend as root"));
    let provision = || backend.provision(host_sandbox());
    let page = format!("http://{}:8080/", internet.addr);
    // A service of the host's own, which no sandbox may reach.
    let host_service = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = host_service.local_addr().unwrap().port();

    let vm = provision().await.expect("a sandbox");
    assert!(
        python(&vm, &fetch(&page)).await.starts_with("failed"),
        "egress none: nothing but loopback"
    );

    vm.set_network(&Policy::all()).await.expect("egress all");
    let table = format!("traforato_{}", tag.replace('-', "_"));
    // On a host running Docker (CI starts it), its FORWARD policy drops what is not accepted
    // in DOCKER-USER: the backend's rules there are what lets the sandbox out.
    let docker_rules = || {
        Command::new("iptables")
            .args(["-w", "-S", "DOCKER-USER"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).matches(&table).count())
    };
    match docker_rules() {
        Some(rules) => assert_eq!(rules, 2, "the backend's rules in DOCKER-USER"),
        None => eprintln!("no Docker running: its FORWARD policy is not part of this run"),
    }
    assert_eq!(
        python(&vm, &fetch(&page)).await,
        "hello from the test internet"
    );
    assert_eq!(
        python(&vm, &fetch("http://inet.test:8080/")).await,
        "hello from the test internet",
        "names resolve through the worker's DNS forwarder"
    );
    // Sandbox root pings (ICMP echo sockets, no raw sockets), in its namespace and out.
    for host in ["127.0.0.1", internet.addr.as_str()] {
        assert_eq!(python(&vm, &ping(host)).await, "pong", "ping {host}");
    }
    assert!(python(&vm, &fetch("http://nowhere.invalid:8080/"))
        .await
        .starts_with("failed"));
    let gateway = python(
        &vm,
        "print(open('/proc/net/route').read().split('\\n')[1].split()[2])",
    )
    .await;
    let gateway =
        u32::from_str_radix(&gateway, 16).map(|g| std::net::Ipv4Addr::from(g.swap_bytes()));
    let gateway = gateway.expect("a default route").to_string();
    for (what, host, port) in [
        ("the host through its veth", gateway.as_str(), host_port),
        ("the host's loopback", "127.0.0.1", host_port),
        ("the metadata address", "169.254.169.254", 80),
        ("a private range", "10.0.0.1", 80),
    ] {
        assert!(
            python(&vm, &connect(host, port))
                .await
                .starts_with("failed"),
            "{what} must stay unreachable"
        );
    }
    // Another sandbox with egress is not reachable either.
    // This one is made with its network, attached while it boots (as a cold create is).
    let other = backend
        .provision_with_network(host_sandbox(), &Policy::all())
        .await
        .expect("a second sandbox, with its network");
    assert_eq!(
        python(&other, &fetch("http://inet.test:8080/")).await,
        "hello from the test internet"
    );
    let other_addr = python(
        &other,
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
         s.connect(('198.18.0.1', 9)); print(s.getsockname()[0])",
    )
    .await;
    assert!(other_addr.starts_with("10.213."), "{other_addr}");
    assert!(python(&vm, &connect(&other_addr, 22))
        .await
        .starts_with("failed"));

    // Changed live: off again, DNS included (no channel out through the resolver).
    vm.set_network(&Policy::none()).await.unwrap();
    assert!(python(&vm, &fetch(&page)).await.starts_with("failed"));
    assert!(
        python(&vm, &fetch("http://inet.test:8080/"))
            .await
            .starts_with("failed"),
        "no DNS without egress"
    );
    // Another sandbox's DNS forwarder is not ours to use.
    let other_gateway = python(&other, "print(open('/etc/resolv.conf').read().split()[1])").await;
    vm.set_network(&Policy::all()).await.unwrap();
    let dig = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)\n\
         q = b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x04inet\\x04test\\x00\\x00\\x01\\x00\\x01'\n\
         s.sendto(q, ({other_gateway:?}, 53))\n\
         try:\n    s.recv(512); print('answered')\n\
         except Exception as e:\n    print('failed:', type(e).__name__)"
    );
    assert!(
        python(&vm, &dig).await.starts_with("failed"),
        "{other_gateway}"
    );
    vm.set_network(&Policy::none()).await.unwrap();
    vm.set_network(&Policy::all()).await.unwrap();
    assert_eq!(
        python(&vm, &fetch(&page)).await,
        "hello from the test internet"
    );

    // An allow-list: only what it names, by name (and then the addresses its names resolved
    // to, for their TTL) or by range.
    let allow = |rules: &[&str]| {
        Policy::parse(
            &traforato_core::api::NetworkPolicy::allow(rules.iter().copied()),
            None,
        )
        .unwrap()
    };
    vm.set_network(&allow(&["inet.test:8080"])).await.unwrap();
    assert!(
        python(&vm, &fetch(&page)).await.starts_with("failed"),
        "an address nobody resolved is not allowed"
    );
    assert_eq!(
        python(&vm, &fetch("http://other.test:8080/")).await,
        "failed: URLError",
        "a name the list does not allow does not resolve"
    );
    assert_eq!(
        python(&vm, &fetch("http://inet.test:8080/")).await,
        "hello from the test internet"
    );
    assert_eq!(
        python(&vm, &fetch(&page)).await,
        "hello from the test internet",
        "the allowed name's address, for its TTL"
    );
    assert!(
        python(&vm, &connect(&internet.addr, 22))
            .await
            .starts_with("failed"),
        "on the rule's port only"
    );
    vm.set_network(&allow(&["inet.test:9999"])).await.unwrap();
    assert!(
        python(&vm, &fetch("http://inet.test:8080/"))
            .await
            .starts_with("failed"),
        "a change forgets what the old list resolved"
    );
    // Web traffic to an allowed name's address must be for an allowed name: its TLS server
    // name or HTTP Host is checked (a shared CDN address carries other names too).
    vm.set_network(&allow(&["inet.test"])).await.unwrap();
    assert_eq!(
        python(&vm, &fetch("http://inet.test/")).await,
        "hello from the test internet",
        "port 80 of an allowed name, inspected"
    );
    let ip = internet.addr.as_str();
    let get = |host: &str| format!("b'GET / HTTP/1.1\\r\\nHost: {host}\\r\\n\\r\\n'");
    for (what, port, data, reached) in [
        (
            "an allowed Host",
            80,
            get("inet.test:80"),
            "HTTP/1.0 200 OK",
        ),
        ("another Host", 80, get("other.test"), ""),
        ("the address as Host", 80, get(ip), ""),
        ("no Host", 80, "b'GET / HTTP/1.0\\r\\n\\r\\n'".into(), ""),
        (
            "an allowed server name",
            443,
            "hello('inet.test')".into(),
            "reached 443",
        ),
        ("another server name", 443, "hello('other.test')".into(), ""),
        ("no server name", 443, "hello(None)".into(), ""),
        ("not TLS", 443, "b'SSH-2.0-x\\r\\n'".into(), ""),
    ] {
        let answer = python(&vm, &send(ip, port, &data)).await;
        if reached.is_empty() {
            assert!(answer.starts_with("failed"), "{what}: {answer}");
        } else {
            assert_eq!(answer, reached, "{what}");
        }
    }
    assert_eq!(
        python(&vm, &fetch(&page)).await,
        "hello from the test internet",
        "other ports are not inspected"
    );
    // A change of policy ends the relayed connections whose name it no longer allows: a
    // connection echoing every 100 ms is cut by a change made a second in.
    let held = format!(
        "{HELLO}\
         s = socket.create_connection(({ip:?}, 443), timeout=2); s.sendall(hello('inet.test'))\n\
         s.recv(100); n = 0; end = time.monotonic() + 8\n\
         try:\n    \
             while time.monotonic() < end:\n        \
                 s.sendall(b'x')\n        \
                 if not s.recv(10):\n            break\n        \
                 n += 1; time.sleep(0.1)\n\
         except Exception:\n    pass\n\
         print('open' if time.monotonic() >= end else 'cut', n)"
    );
    let change = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        vm.set_network(&allow(&["other.test"])).await.unwrap();
    };
    let (held, ()) = tokio::join!(python(&vm, &held), change);
    let (how, echoes) = held.split_once(' ').expect(&held);
    assert_eq!(how, "cut", "{held}");
    assert!(
        echoes.parse::<u32>().unwrap() > 2,
        "it was relayed before: {held}"
    );
    vm.set_network(&allow(&["inet.test"])).await.unwrap();
    let _ = python(&vm, &connect("inet.test", 80)).await;
    // A name allowed on 443 only: the same checks through its port-bound set.
    vm.set_network(&allow(&["inet.test:443"])).await.unwrap();
    let _ = python(&vm, &connect("inet.test", 443)).await;
    assert_eq!(
        python(&vm, &send(ip, 443, "hello('inet.test')")).await,
        "reached 443"
    );
    assert!(python(&vm, &send(ip, 443, "hello('other.test')"))
        .await
        .starts_with("failed"));
    assert!(python(&vm, &send(ip, 80, &get("inet.test")))
        .await
        .starts_with("failed"));
    vm.set_network(&allow(&[&format!("{}/32", internet.addr)]))
        .await
        .unwrap();
    assert_eq!(
        python(&vm, &fetch(&page)).await,
        "hello from the test internet",
        "a listed range"
    );
    assert!(python(&vm, &fetch("http://inet.test:8080/"))
        .await
        .starts_with("failed"));
    for (what, host, port) in [
        ("the host", gateway.as_str(), host_port),
        ("the metadata address", "169.254.169.254", 80),
    ] {
        assert!(
            python(&vm, &connect(host, port))
                .await
                .starts_with("failed"),
            "{what} must stay unreachable under an allow-list"
        );
    }

    // What its network carried: the page went in, the requests out.
    let bytes = vm
        .network_bytes()
        .expect("byte counts once it has a network");
    assert!(bytes.received > 29 && bytes.sent > 0, "{bytes:?}");

    // Nothing is left: interfaces go with the sandboxes, the table and ip_forward with the
    // backend.
    let links = || {
        String::from_utf8(
            Command::new("ip")
                .args(["-o", "link"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
    };
    assert!(links().contains(": tf"), "{}", links());
    for vm in [vm, other] {
        vm.destroy().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!links().contains(": tf"), "veths left: {}", links());
    backend.shutdown().await;
    assert!(
        docker_rules().is_none_or(|rules| rules == 0),
        "DOCKER-USER is as it was"
    );
    let listed = Command::new("nft")
        .args(["list", "table", "inet", &table])
        .output()
        .unwrap();
    assert!(!listed.status.success(), "the table {table} is left");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        forwarding_before,
        "ip_forward is as it was"
    );
    let _ = backend.cleanup_leftovers().await;
    let _ = std::fs::remove_dir_all(&state_dir);

    // A bandwidth cap, each way: 4 Mbit/s moves 512 KiB in about a second (uncapped, in
    // milliseconds).
    let config = ContainerConfig {
        python_zygote: false,
        network: NetworkSettings {
            bandwidth: Some("4mbit".parse().unwrap()),
            ..settings
        },
        ..ContainerConfig::for_tests("egress-cap", env!("CARGO_BIN_EXE_traforato-sandbox-init"))
    };
    let state_dir = config.state_dir.clone();
    let backend = Arc::new(ContainerBackend::new(config).expect("container backend as root"));
    let vm = backend.provision(host_sandbox()).await.expect("a sandbox");
    vm.set_network(&Policy::all()).await.expect("capped egress");
    let timed = |transfer: &str| {
        format!(
            "import socket, time, urllib.request\n\
             t = time.monotonic()\n\
             n = {transfer}\n\
             print(n, round(time.monotonic() - t, 2))"
        )
    };
    let ip = internet.addr.as_str();
    let download = timed(&format!(
        "len(urllib.request.urlopen('http://{ip}:8080/big', timeout=20).read())"
    ));
    let upload = timed(&format!(
        "(lambda s: (s.sendall(b'x' * 524288), s.shutdown(socket.SHUT_WR), \
         int(s.recv(64)))[2])(socket.create_connection(('{ip}', 9000), timeout=20))"
    ));
    for (way, code) in [("download", download), ("upload", upload)] {
        let answer = python(&vm, &code).await;
        let (bytes, seconds) = answer.split_once(' ').expect(&answer);
        assert_eq!(bytes, "524288", "{way}: {answer}");
        let seconds: f64 = seconds.parse().unwrap();
        assert!(
            seconds >= 0.7,
            "{way} of 512 KiB at 4 Mbit/s took {seconds} s"
        );
    }
    vm.destroy().await.unwrap();
    backend.shutdown().await;
    let _ = backend.cleanup_leftovers().await;
    let _ = std::fs::remove_dir_all(&state_dir);

    // A range the host already uses (another worker's sandboxes have addresses in it) is
    // refused, not shared.
    let dummy = format!("ti{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let sh = |script: &str| {
        Command::new("sh")
            .args(["-ec", script])
            .status()
            .unwrap()
            .success()
    };
    assert!(sh(&format!(
        "ip link add {dummy} type veth peer name {dummy}p\nip addr add 10.216.0.1/32 dev {dummy}"
    )));
    let config = ContainerConfig {
        python_zygote: false,
        network: NetworkSettings {
            range: "10.216.0.0/16".into(),
            ..NetworkSettings::default()
        },
        ..ContainerConfig::for_tests(
            "egress-overlap",
            env!("CARGO_BIN_EXE_traforato-sandbox-init"),
        )
    };
    let state_dir = config.state_dir.clone();
    let backend = Arc::new(ContainerBackend::new(config).expect("container backend as root"));
    let refused = backend
        .provision_with_network(host_sandbox(), &Policy::all())
        .await;
    let _ = sh(&format!("ip link delete {dummy}"));
    let error = refused
        .err()
        .expect("a range in use is refused")
        .to_string();
    assert!(error.contains("is in use on this host"), "{error}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !links().contains(": tf"),
        "the refused sandbox left {}",
        links()
    );
    backend.shutdown().await;
    let _ = backend.cleanup_leftovers().await;
    let _ = backend.remove_cgroup_parents();
    let _ = std::fs::remove_dir_all(&state_dir);
    drop(internet);
}
