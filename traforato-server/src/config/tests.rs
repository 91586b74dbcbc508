//! Tests of the configuration: addresses, values, YAML layers, precedence, the settings of
//! each binary, and the snapshot of every flag and variable.

use super::*;
use std::ffi::OsString;
use std::sync::Mutex;

use clap::{CommandFactory, Parser};
use tracing_subscriber::filter::LevelFilter;
use traforato_core::auth::AuthMode;
use traforato_core::network::Egress;

/// Serialises the tests that parse command lines, since clap reads the environment.
static ENV_LOCK: Mutex<()> = Mutex::new(());

fn worker_args(extra: &[&str]) -> WorkerArgs {
    let mut argv = vec!["traforato-worker"];
    argv.extend_from_slice(extra);
    WorkerArgs::try_parse_from(argv).unwrap()
}

fn chain(err: &ConfigError) -> String {
    crate::http::error_chain(err)
}

#[test]
fn listen_addresses() {
    assert_eq!(bind_address(":8080").unwrap(), "0.0.0.0:8080");
    assert_eq!(bind_address("127.0.0.1:9").unwrap(), "127.0.0.1:9");
    assert!(matches!(bind_address(" "), Err(ConfigError::EmptyListen)));
    let s = |a| split_host_port(a).map(|(h, p)| format!("{h}|{p}"));
    assert_eq!(s(":8081").as_deref(), Some("|8081"));
    assert_eq!(s("[::]:8081").as_deref(), Some("::|8081"));
    assert_eq!(s("host:1").as_deref(), Some("host|1"));
    assert_eq!(s("host:").as_deref(), Some("host|"));
    assert_eq!(s("host"), None);
    assert_eq!(s("::1"), None);
    assert_eq!(s("[::1]"), None);
}

#[test]
fn advertise_urls() {
    assert_eq!(
        advertise_url(":9090", "worker-a.local", None),
        "http://worker-a.local:9090"
    );
    assert_eq!(
        advertise_url("0.0.0.0:9090", " ", None),
        "http://localhost:9090"
    );
    assert_eq!(advertise_url("[::]:9090", "h", None), "http://h:9090");
    assert_eq!(
        advertise_url("10.0.0.5:9090", "h", None),
        "http://10.0.0.5:9090"
    );
    assert_eq!(
        advertise_url("[fe80::1]:9090", "h", None),
        "http://[fe80::1]:9090"
    );
    assert_eq!(advertise_url("nonsense", "h", None), "http://h:8081");
    assert_eq!(advertise_url("host:", "h", None), "http://host:8081");
    assert_eq!(
        advertise_url("127.0.0.1:0", "h", Some(4321)),
        "http://127.0.0.1:4321"
    );
    assert_eq!(
        advertise_url("127.0.0.1:7", "h", Some(4321)),
        "http://127.0.0.1:7"
    );
}

#[test]
fn dev_urls() {
    assert_eq!(local_url(":8080", 8080, None), "http://localhost:8080");
    assert_eq!(
        local_url("0.0.0.0:18080", 8080, None),
        "http://localhost:18080"
    );
    assert_eq!(local_url("127.0.0.1:9", 8080, None), "http://127.0.0.1:9");
    assert_eq!(local_url("garbage", 8081, None), "http://localhost:8081");
    assert_eq!(
        local_url("127.0.0.1:0", 8081, Some(5555)),
        "http://127.0.0.1:5555"
    );
}

#[test]
fn single_dash_flags_become_long() {
    let out = go_style_args(
        [
            "bin",
            "-listen",
            ":1",
            "-h",
            "--x",
            "-5",
            "-worker-id=w",
            "--",
            "-keep",
        ]
        .map(OsString::from),
    );
    let out: Vec<_> = out.iter().map(|s| s.to_str().unwrap()).collect();
    assert_eq!(
        out,
        [
            "bin",
            "--listen",
            ":1",
            "-h",
            "--x",
            "-5",
            "--worker-id=w",
            "--",
            "-keep"
        ]
    );
}

const FULL_YAML: &str = r#"
broker-id: broker_yaml
broker-control-url: http://broker.internal:8080
virtualization: vetu
hostname: worker-a.local
hardware-sku: gpu-a100
max-live-sandboxes: 7
default-ttl: 45m
registration-heartbeat: 25s
registration-jitter-percent: 15
log:
  file: /var/log/traforato/worker.log
  rotate-size: 100 MB
  max-rotations: 10
"#;

#[test]
fn listen_defaults_follow_the_mode() {
    assert_eq!(listen_or_default("", 8080, AuthMode::Dev), "127.0.0.1:8080");
    assert_eq!(
        listen_or_default("  ", 8081, AuthMode::Dev),
        "127.0.0.1:8081"
    );
    assert_eq!(listen_or_default("", 8080, AuthMode::Prod), ":8080");
    assert_eq!(listen_or_default(" :9000 ", 8080, AuthMode::Dev), ":9000");
}

#[test]
fn dev_mode_listens_on_loopback_only_unless_told_otherwise() {
    let dev = AuthMode::Dev;
    for loopback in [
        "127.0.0.1:8080",
        "127.0.0.2:0",
        "[::1]:8080",
        "localhost:8080",
        "LOCALHOST:1",
        "[::ffff:127.0.0.1]:8080",
    ] {
        assert!(check_exposure(loopback, dev, false).is_ok(), "{loopback}");
    }
    for network in [
        ":8080",
        "0.0.0.0:8080",
        "[::]:8080",
        "198.18.0.1:8080",
        "[2001:db8::1]:8080",
    ] {
        let err = check_exposure(network, dev, false).unwrap_err();
        assert!(
            matches!(&err, ConfigError::DevModeOnNetwork { listen } if listen == network),
            "{network}: {err}"
        );
        assert!(err.to_string().contains("--insecure-dev-mode-on-network"));
        // The explicit flag allows it, and so does prod mode.
        assert!(check_exposure(network, dev, true).is_ok(), "{network}");
        assert!(
            check_exposure(network, AuthMode::Prod, false).is_ok(),
            "{network}"
        );
    }
    // A name that does not resolve cannot be shown to be loopback.
    assert!(check_exposure("no-such-host.invalid:8080", dev, false).is_err());
}

#[test]
fn token_lifetime_and_internal_secret_flags() {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let args = BrokerArgs::try_parse_from(["traforato-broker"]).unwrap();
    let auth = args.auth.auth_config();
    assert_eq!(auth.max_token_lifetime, Duration::from_secs(3600));
    assert!(auth.internal_secret.is_empty());
    let args = BrokerArgs::try_parse_from([
        "traforato-broker",
        "--jwt-max-lifetime",
        "10m",
        "--internal-secret",
        "int-secret",
    ])
    .unwrap();
    let auth = args.auth.auth_config();
    assert_eq!(auth.max_token_lifetime, Duration::from_secs(600));
    assert_eq!(auth.internal_secret, "int-secret");
    assert!(!format!("{:?}", args.auth).contains("int-secret"));
    assert!(
        BrokerArgs::try_parse_from(["traforato-broker", "--jwt-max-lifetime", "3600"]).is_err()
    );
}

/// The worker settings of a command line with `yaml` over it (under [`ENV_LOCK`]).
fn worker(extra: &[&str], yaml: &str) -> Result<WorkerSettings, ConfigError> {
    let args = worker_args(extra);
    let mut flags = args.worker.layer();
    flags.broker_control_url = Some(args.broker_control_url.clone());
    let file = parse_worker_yaml(yaml)?;
    WorkerSettings::resolve(
        layer::Layer::over(file, flags),
        args.auth.mode(),
        args.auth.insecure_dev_mode_on_network,
    )
}

#[test]
fn yaml_overrides_defaults() {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let values = worker(&[], FULL_YAML).unwrap();
    assert_eq!(values.broker_id.as_str(), "broker_yaml");
    assert_eq!(
        values.broker_control_url.as_deref(),
        Some("http://broker.internal:8080")
    );
    assert_eq!(values.virtualization.as_deref(), Some("vetu"));
    assert_eq!(values.hostname, "worker-a.local");
    assert_eq!(values.hardware_sku, "gpu-a100");
    assert_eq!(values.max_live_sandboxes.or_else(|| 0), 7);
    assert_eq!(values.default_ttl, Duration::from_secs(45 * 60));
    assert_eq!(values.registration_heartbeat, Duration::from_secs(25));
    assert_eq!(values.registration_jitter_percent, 15);
    assert_eq!(
        values.log.file,
        Some(PathBuf::from("/var/log/traforato/worker.log"))
    );
    assert_eq!(values.log.rotate_size_mib, 100);
    assert_eq!(values.log.max_rotations, 10);
    assert_eq!(values.worker_id.as_str(), "worker_local");
    assert_eq!(values.max_ttl, Duration::from_secs(24 * 3600));
    assert_eq!(values.virtualizations(), vec!["container", "vetu"]);
}

#[test]
fn yaml_unknown_keys_are_named() {
    for (yaml, key) in [
        ("unknown-field: 1\n", "unknown-field"),
        ("log:\n  colour: red\n", "colour"),
        ("pre-pull:\n  imagez: [a]\n", "imagez"),
        ("container:\n  statedir: /x\n", "statedir"),
    ] {
        let err = parse_worker_yaml(yaml).unwrap_err();
        assert!(chain(&err).contains(key), "{}", chain(&err));
    }
}

#[test]
fn yaml_container_section() {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let values = worker(
        &[],
        "container:\n  state-dir: /srv/traforato\n  cgroup-parent: sbx\n  images:\n    \
         py: /srv/images/py\n  pids-limit: 64\n  scratch-size-mib: 256\n  \
         python-zygote: false\n  lazy-zygote: true\n  spare-inits: 0\n",
    )
    .unwrap();
    let c = &values.container;
    assert_eq!(c.state_dir, Some(PathBuf::from("/srv/traforato")));
    assert_eq!(c.cgroup_parent.as_deref(), Some("sbx"));
    assert_eq!(c.images.get("py"), Some(&PathBuf::from("/srv/images/py")));
    assert_eq!(c.pids_limit, Some(64));
    assert_eq!(c.scratch_size_mib, Some(256));
    assert_eq!(c.python_zygote, Some(false));
    assert_eq!(c.spare_inits, Some(0));
    assert_eq!(c.lazy_zygote, Some(true));
    // An empty section is no section.
    let values = worker(&[], "container:\nlog:\n").unwrap();
    assert_eq!(values.container, ContainerSettings::default());
}

#[test]
fn yaml_network_section() {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let values = worker(&[], "").unwrap();
    assert_eq!(values.network.default_egress, Egress::None);
    assert_eq!(values.network.allowed_modes, Egress::ALL.to_vec());
    let values = worker(
        &[],
        "network:\n  default-egress: all\n  allowed-modes: [none, ALL]\n",
    )
    .unwrap();
    assert_eq!(values.network.default_egress, Egress::All);
    assert_eq!(values.network.allowed_modes, [Egress::None, Egress::All]);
    assert_eq!(values.worker_config(None).network, values.network);
    let values = worker(
        &[],
        "network:\n  range: 10.99.0.0/16\n  blocked-cidrs: [\"10.0.0.0/8\", \" \"]\n  \
         dns-upstream: 192.0.2.53\n  uplink: eth1\n  bandwidth: 20Mbit\n",
    )
    .unwrap();
    let plumbing = &values.container.network;
    assert_eq!(
        plumbing.bandwidth.map(|b| b.bits_per_second()),
        Some(20_000_000)
    );
    let err = worker(&[], "network:\n  bandwidth: fast\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid network.bandwidth: \"fast\" is not a bandwidth: no unit (kbit, mbit or gbit) \
         (e.g. 20mbit, 500kbit, 1gbit)"
    );
    assert_eq!(plumbing.range.as_deref(), Some("10.99.0.0/16"));
    assert_eq!(plumbing.blocked_cidrs, Some(vec!["10.0.0.0/8".to_string()]));
    assert_eq!(
        plumbing.dns_upstream,
        Some("192.0.2.53:53".parse().unwrap())
    );
    let err = worker(&[], "network:\n  dns-upstream: resolver\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid network.dns-upstream: \"resolver\" is not an address (ip or ip:port)"
    );
    let err = parse_worker_yaml("network:\n  default-egress: open\n").unwrap_err();
    assert!(
        chain(&err).contains("network.egress must be none, all or allow"),
        "{}",
        chain(&err)
    );
}

#[test]
fn yaml_images_section() {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let values = worker(
        &[],
        "images:\n  dir: /srv/images\n  insecure-registries: [\" registry.lan:5000 \", \"\"]\n  \
         mirrors:\n    docker.io: [\"http://127.0.0.1:5000\", \"https://mirror.example\"]\n  \
         pull-timeout: 10s\n  max-disk: 20GiB\n  operators: [\" ops \", \"\"]\n  \
         allowed-registries: [docker.io, \"registry.lan:5000\"]\n",
    )
    .unwrap();
    let oci = &values.container.oci;
    assert_eq!(oci.dir, Some(Some(PathBuf::from("/srv/images"))));
    assert_eq!(oci.max_disk, Some(20 << 30));
    assert_eq!(oci.operators, ["ops"]);
    assert_eq!(oci.allowed_registries, ["docker.io", "registry.lan:5000"]);
    assert_eq!(values.worker_config(None).operators, ["ops"]);
    assert_eq!(oci.insecure_registries, ["registry.lan:5000"]);
    assert_eq!(
        oci.mirrors.get("docker.io").unwrap(),
        &["http://127.0.0.1:5000", "https://mirror.example"]
    );
    assert_eq!(oci.pull_timeout, Some(Duration::from_secs(10)));
    let values = worker(
        &[],
        "images:\n  credentials:\n    registry.lan:5000:\n      username: ci\n      \
         password: s3cret\n    ghcr.io:\n      username: bot\n      password-file: /run/pw\n  \
         docker-config: /etc/docker.json\n",
    )
    .unwrap();
    let oci = &values.container.oci;
    assert_eq!(
        oci.credentials["registry.lan:5000"].password.as_deref(),
        Some("s3cret")
    );
    assert_eq!(
        oci.credentials["ghcr.io"].password_file,
        Some(PathBuf::from("/run/pw"))
    );
    assert_eq!(oci.docker_config, Some(PathBuf::from("/etc/docker.json")));
    assert!(!format!("{oci:?}").contains("s3cret"), "{oci:?}");
    let values = worker(&[], "images:\n  dir: none\n").unwrap();
    assert_eq!(values.container.oci.dir, Some(None), "none: no OCI images");
    let err = parse_worker_yaml("images:\n  registry: x\n").unwrap_err();
    assert!(chain(&err).contains("registry"), "{}", chain(&err));
}

#[test]
fn yaml_documents_and_types() {
    for empty in ["", "# only a comment\n", "---\n"] {
        assert_eq!(
            parse_worker_yaml(empty).unwrap(),
            layer::WorkerLayer::default()
        );
    }
    let err = parse_worker_yaml("worker-id: a\n---\nworker-id: b\n").unwrap_err();
    assert!(matches!(err, ConfigError::MultipleDocuments));
    assert_eq!(err.to_string(), "multiple YAML documents are not supported");
    // Every value is typed where it is read: the error names the key and the cause.
    for (yaml, key, cause) in [
        ("default-ttl: 45\n", "default-ttl", "missing unit"),
        ("default-ttl: 45x\n", "default-ttl", "unknown unit"),
        ("total-cores: \"2\"\n", "total-cores", "invalid type"),
        ("total-cores: -1\n", "total-cores", "not a whole number"),
        ("worker-id: a-b\n", "worker-id", ""),
        ("log:\n  level: loud\n", "level", "invalid log level"),
        (
            "log:\n  rotate-size: 12 parsecs\n",
            "rotate-size",
            "invalid size",
        ),
        ("log:\n  max-rotations: -1\n", "max-rotations", ""),
        (
            "pre-pull:\n  warmup-timeout-seconds: -5\n",
            "warmup-timeout-seconds",
            "",
        ),
    ] {
        let err = chain(&parse_worker_yaml(yaml).unwrap_err());
        assert!(err.contains(key) && err.contains(cause), "{yaml}: {err}");
    }
    // A zero count is "automatic", and a key present overrides even with it.
    let layer = parse_worker_yaml("total-cores: 0\n").unwrap();
    assert_eq!(layer.total_cores, Some(values::AutoCount(None)));
}

#[test]
fn pre_pull_targets_are_deduplicated() {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let values = worker(
        &[],
        "virtualization: vetu\npre-pull:\n  images: [\"ubuntu:24.04\", \" \", \"ubuntu:24.04\", \"alpine:3.20\"]\n  warmup-script: echo hi\n",
    )
    .unwrap();
    let targets = values.pre_pull_targets();
    assert_eq!(targets.len(), 2);
    assert_eq!(targets[0].tuple.image, "ubuntu:24.04");
    assert_eq!(targets[1].tuple.image, "alpine:3.20");
    for t in &targets {
        assert_eq!(t.tuple.virtualization, "vetu");
        assert_eq!(t.tuple.cpu, 1);
        assert_eq!(t.target_count, 1);
        assert_eq!(t.warmup_script, "echo hi");
        assert_eq!(t.warmup_timeout, DEFAULT_WARMUP_TIMEOUT);
    }
    let values = worker(
        &[],
        "pre-pull:\n  images: [\"ubuntu:24.04\"]\n  warmup-timeout-seconds: 5\n",
    )
    .unwrap();
    let targets = values.pre_pull_targets();
    assert_eq!(targets[0].tuple.virtualization, "container");
    assert_eq!(targets[0].warmup_timeout, Duration::from_secs(5));
}

#[test]
fn sizes() {
    let mib = |s: &str| parse_size(s).unwrap().mib_ceil();
    assert_eq!(mib("128 MB"), 128);
    assert_eq!(mib("100 MB"), 100);
    assert_eq!(mib("1gib"), 1024);
    assert_eq!(mib("1 K"), 1);
    assert_eq!(mib("1048577"), 2);
    assert_eq!(parse_size("512KiB").unwrap(), ByteSize(512 << 10));
    for bad in ["", "invalid", "MB", "12 parsecs", "99999999999999999999 TB"] {
        assert!(matches!(parse_size(bad), Err(ValueError::Size(_))), "{bad}");
    }
    assert_eq!(
        parse_size("invalid").unwrap_err().to_string(),
        "invalid size \"invalid\" (a number of bytes with an optional unit: K, M, G, T)"
    );
}

#[test]
fn rotate_size_in_the_log_section() {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let log = |yaml: &str| worker(&[], yaml).map(|v| v.log);
    assert_eq!(log("").unwrap().rotate_size_mib, 100);
    assert_eq!(
        log("log:\n  rotate-size: \"\"\n").unwrap().rotate_size_mib,
        100
    );
    assert_eq!(
        log("log:\n  rotate-size: 1 K\n").unwrap().rotate_size_mib,
        1
    );
    assert_eq!(
        log("log:\n  rotate-size: 1048577\n")
            .unwrap()
            .rotate_size_mib,
        2
    );
    assert!(matches!(
        log("log:\n  rotate-size: 0 MB\n"),
        Err(ConfigError::InvalidRotateSize(_))
    ));
    let settings = log("log:\n  level: WARNING\n  file: /tmp/x.log\n").unwrap();
    assert_eq!(settings.level, LevelFilter::WARN);
    assert_eq!(settings.file, Some(PathBuf::from("/tmp/x.log")));
    assert_eq!(settings.max_rotations, 0);
}

#[test]
fn log_levels() {
    assert_eq!(parse_log_level("trace").unwrap(), LevelFilter::DEBUG);
    assert_eq!(parse_log_level("DEBUG").unwrap(), LevelFilter::DEBUG);
    assert_eq!(parse_log_level("").unwrap(), LevelFilter::INFO);
    assert_eq!(parse_log_level("info").unwrap(), LevelFilter::INFO);
    assert_eq!(parse_log_level("warning").unwrap(), LevelFilter::WARN);
    assert_eq!(parse_log_level("panic").unwrap(), LevelFilter::ERROR);
    assert_eq!(
        parse_log_level("loud").unwrap_err().to_string(),
        "invalid log level \"loud\" (debug, info, warn or error)"
    );
}

#[test]
fn precedence_yaml_flag_env_default() {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("TRAFORATO_WORKER_HOSTNAME", "env-host");
    std::env::set_var("TRAFORATO_WORKER_ID", "env_worker");
    std::env::set_var("TRAFORATO_WORKER_BROKER_ID", "env_broker");
    let args = WorkerArgs::try_parse_from(go_style_args(
        [
            "traforato-worker",
            "--worker-id",
            "flag_worker",
            "-broker-id=flag_broker",
        ]
        .map(OsString::from),
    ));
    std::env::remove_var("TRAFORATO_WORKER_HOSTNAME");
    std::env::remove_var("TRAFORATO_WORKER_ID");
    std::env::remove_var("TRAFORATO_WORKER_BROKER_ID");
    let args = args.unwrap();
    // Default (nothing set): listen, chosen by the mode.
    assert_eq!(args.worker.listen, "");
    // Env over default.
    assert_eq!(args.worker.hostname, "env-host");
    // Flag over env.
    assert_eq!(args.worker.worker_id.as_str(), "flag_worker");
    assert_eq!(args.worker.broker_id.as_str(), "flag_broker");
    // YAML over flag.
    let yaml = parse_worker_yaml("worker-id: yaml_worker\n").unwrap();
    let values = WorkerSettings::resolve(
        layer::Layer::over(yaml, args.worker.layer()),
        AuthMode::Dev,
        false,
    )
    .unwrap();
    assert_eq!(values.listen, "127.0.0.1:8081");
    assert_eq!(values.worker_id.as_str(), "yaml_worker");
    assert_eq!(values.broker_id.as_str(), "flag_broker");
    assert_eq!(values.hostname, "env-host");
}

#[test]
fn typed_flags_refuse_bad_values() {
    for bad in [
        &["--worker-id", "a-b"][..],
        &["--total-cores", "-1"][..],
        &["--total-cores", "two"][..],
        &["--default-ttl", "30"][..],
    ] {
        let mut argv = vec!["traforato-worker"];
        argv.extend_from_slice(bad);
        assert!(WorkerArgs::try_parse_from(argv).is_err(), "{bad:?}");
    }
    let args = worker_args(&["--registration-jitter-percent", "-5"]);
    assert_eq!(args.worker.registration_jitter_percent, -5);
}

#[test]
fn worker_config_applies_runtime_defaults() {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let flags = [
        "--listen",
        "0.0.0.0:0",
        "--insecure-dev-mode-on-network",
        "--hostname",
        "worker-a.local",
        "--registration-jitter-percent",
        "120",
        "--broker-control-url",
        "http://broker:8080/",
    ];
    let values = worker(&flags, "").unwrap();
    let config = values.worker_config(Some(4242));
    assert!(config.total_cores >= 1);
    assert_eq!(
        config.total_memory_mib,
        u64::from(config.total_cores) * 1024
    );
    assert!(config.max_live_sandboxes >= 1);
    assert_eq!(config.registration_jitter_percent, 95);
    assert_eq!(config.advertise_url, "http://worker-a.local:4242");
    assert_eq!(
        config.broker_public_url.as_deref(),
        Some("http://broker:8080")
    );
    assert_eq!(config.default_virtualization, "container");
    assert_eq!(config.max_ttl, Duration::from_secs(24 * 3600));
    assert_eq!(config.auth_mode, AuthMode::Dev);
    let values = worker(
        &flags,
        "total-cores: 3\nadvertise-url: https://w.example/\n",
    )
    .unwrap();
    let config = values.worker_config(None);
    assert_eq!(config.total_cores, 3);
    assert_eq!(config.total_memory_mib, 3072);
    assert_eq!(config.advertise_url, "https://w.example");
}

#[test]
fn auth_settings_pick_the_mode_and_hide_the_secret() {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // No secret: dev everywhere, default issuer and audience.
    let values = WorkerSettings::load_worker(&worker_args(&[])).unwrap();
    assert_eq!(values.auth_mode, AuthMode::Dev);
    assert_eq!(values.worker_config(None).auth_mode, AuthMode::Dev);
    let args = BrokerArgs::try_parse_from(["traforato-broker", "--jwt-secret", " "]).unwrap();
    let settings = BrokerSettings::from_args(&args).unwrap();
    assert_eq!(settings.auth.mode(), AuthMode::Dev);
    assert!(!settings.config.prod_mode);
    assert_eq!(settings.auth.issuer, "traforato");
    assert_eq!(settings.auth.audience, "traforato-api");

    // A secret: prod, on the worker, the broker and both halves of dev.
    let args = worker_args(&["--jwt-secret", "hunter2-secret"]);
    let values = WorkerSettings::load_worker(&args).unwrap();
    assert_eq!(values.auth_mode, AuthMode::Prod);
    assert_eq!(values.worker_config(None).auth_mode, AuthMode::Prod);
    assert_eq!(args.auth.auth_config().mode(), AuthMode::Prod);
    let args = BrokerArgs::try_parse_from([
        "traforato-broker",
        "--jwt-secret=hunter2-secret",
        "--jwt-issuer",
        "iss-x",
        "--jwt-audience",
        "aud-y",
    ])
    .unwrap();
    let settings = BrokerSettings::from_args(&args).unwrap();
    assert!(settings.config.prod_mode);
    assert_eq!(settings.auth.issuer, "iss-x");
    assert_eq!(settings.auth.audience, "aud-y");
    let shown = format!("{args:?} {settings:?} {:#?}", args.auth);
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");

    std::env::set_var("TRAFORATO_JWT_SECRET", "hunter2-secret");
    let args = DevArgs::try_parse_from(["traforato-dev"]);
    std::env::remove_var("TRAFORATO_JWT_SECRET");
    let settings = DevSettings::load(&args.unwrap()).unwrap();
    assert_eq!(settings.auth.mode(), AuthMode::Prod);
    assert!(settings.broker_config().prod_mode);
    assert_eq!(
        settings.worker.worker_config(None).auth_mode,
        AuthMode::Prod
    );
    let shown = format!("{settings:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn broker_settings_from_flags() {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let args = BrokerArgs::try_parse_from([
        "traforato-broker",
        "--placement-retry-max",
        "0",
        "--worker-lease-ttl",
        "1m30s",
        "--default-virtualization",
        "fake",
    ])
    .unwrap();
    let settings = BrokerSettings::from_args(&args).unwrap();
    // Development mode (no secret) listens on loopback by default.
    assert_eq!(settings.bind, "127.0.0.1:8080");
    assert_eq!(settings.config.placement_retry_max, 0);
    assert_eq!(settings.config.worker_lease_ttl, Duration::from_secs(90));
    assert_eq!(
        settings.config.lease_sweep_interval,
        Duration::from_secs(10)
    );
    assert_eq!(settings.config.default_virtualization, "fake");
    assert_eq!(settings.config.broker_id.as_str(), "broker_local");
    assert!(BrokerArgs::try_parse_from(["traforato-broker", "--worker-lease-ttl", "120"]).is_err());
    // Ids are checked where they are parsed.
    let err = BrokerArgs::try_parse_from(["traforato-broker", "--broker-id", "a-b"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--broker-id"), "{err}");
}

#[test]
fn dev_settings_use_yaml_broker_id() {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("worker.yaml");
    std::fs::write(
        &file,
        "broker-id: broker_yaml\ndefault-virtualization: fake\n",
    )
    .unwrap();
    let args = DevArgs::try_parse_from([
        "traforato-dev",
        "--file",
        file.to_str().unwrap(),
        "--worker-base-url",
        "http://w:1",
    ])
    .unwrap();
    let settings = DevSettings::load(&args).unwrap();
    let broker = settings.broker_config();
    assert_eq!(broker.broker_id.as_str(), "broker_yaml");
    assert_eq!(broker.default_virtualization, "fake");
    assert_eq!(broker.placement_retry_max, 2);
    let worker = settings.worker.worker_config(None);
    assert_eq!(worker.broker_id.as_str(), "broker_yaml");
    assert_eq!(worker.advertise_url, "http://w:1");
    assert_eq!(settings.broker_listen, "127.0.0.1:8080");
    assert_eq!(settings.worker.listen, "127.0.0.1:8081");
    let missing =
        DevArgs::try_parse_from(["traforato-dev", "--file", "/nonexistent/x.yaml"]).unwrap();
    assert!(matches!(
        DevSettings::load(&missing),
        Err(ConfigError::ReadFile { .. })
    ));
}

#[test]
fn binaries_refuse_network_listens_in_dev_mode() {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let args = BrokerArgs::try_parse_from(["traforato-broker", "--listen", ":8080"]).unwrap();
    assert!(matches!(
        BrokerSettings::from_args(&args),
        Err(ConfigError::DevModeOnNetwork { .. })
    ));
    let args = BrokerArgs::try_parse_from([
        "traforato-broker",
        "--listen",
        ":8080",
        "--insecure-dev-mode-on-network",
    ])
    .unwrap();
    assert_eq!(
        BrokerSettings::from_args(&args).unwrap().bind,
        "0.0.0.0:8080"
    );
    let args = BrokerArgs::try_parse_from(["traforato-broker", "--jwt-secret", "s"]).unwrap();
    assert_eq!(
        BrokerSettings::from_args(&args).unwrap().bind,
        "0.0.0.0:8080"
    );

    let args = worker_args(&["--listen", "0.0.0.0:8081"]);
    assert!(matches!(
        WorkerSettings::load_worker(&args),
        Err(ConfigError::DevModeOnNetwork { .. })
    ));
    let args = worker_args(&["--jwt-secret", "s"]);
    assert_eq!(WorkerSettings::load_worker(&args).unwrap().listen, ":8081");

    for flags in [
        &["traforato-dev", "--broker-listen", ":8080"][..],
        &["traforato-dev", "--worker-listen", ":8081"][..],
    ] {
        let args = DevArgs::try_parse_from(flags).unwrap();
        assert!(
            matches!(
                DevSettings::load(&args),
                Err(ConfigError::DevModeOnNetwork { .. })
            ),
            "{flags:?}"
        );
    }
    let args = DevArgs::try_parse_from([
        "traforato-dev",
        "--broker-listen",
        ":8080",
        "--worker-listen",
        ":8081",
        "--insecure-dev-mode-on-network",
    ])
    .unwrap();
    let settings = DevSettings::load(&args).unwrap();
    assert_eq!(settings.broker_listen, ":8080");
}

/// Every flag and variable of a binary, one line each, sorted: `--long VAR [defaults]`.
fn flags_of(command: clap::Command) -> Vec<String> {
    let name = command.get_name().to_string();
    let mut lines: Vec<String> = command
        .get_arguments()
        .map(|arg| {
            let long = arg.get_long().map(|l| format!("--{l}")).unwrap_or_default();
            let short = arg
                .get_short()
                .map(|s| format!(" -{s}"))
                .unwrap_or_default();
            let env = arg
                .get_env()
                .map(|e| format!(" {}", e.to_string_lossy()))
                .unwrap_or_default();
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            format!("{name} {long}{short}{env} {defaults:?}")
        })
        .collect();
    lines.sort();
    lines
}

/// The flags, variables and defaults of the three binaries are contract: none changes by
/// accident. (Change this list only with a note in the README.)
#[test]
fn flags_and_variables_snapshot() {
    let mut all = flags_of(BrokerArgs::command());
    all.extend(flags_of(WorkerArgs::command()));
    all.extend(flags_of(DevArgs::command()));
    let expected = FLAG_SNAPSHOT.trim().lines().collect::<Vec<_>>();
    assert_eq!(all, expected, "actual:\n{}", all.join("\n"));
}

const FLAG_SNAPSHOT: &str = r#"
traforato-broker --broker-id TRAFORATO_BROKER_ID ["broker_local"]
traforato-broker --default-virtualization TRAFORATO_BROKER_DEFAULT_VIRTUALIZATION ["container"]
traforato-broker --insecure-dev-mode-on-network TRAFORATO_INSECURE_DEV_MODE_ON_NETWORK []
traforato-broker --internal-secret TRAFORATO_INTERNAL_SECRET [""]
traforato-broker --internal-secret-file TRAFORATO_INTERNAL_SECRET_FILE [""]
traforato-broker --jwt-audience TRAFORATO_JWT_AUDIENCE ["traforato-api"]
traforato-broker --jwt-issuer TRAFORATO_JWT_ISSUER ["traforato"]
traforato-broker --jwt-max-lifetime TRAFORATO_JWT_MAX_LIFETIME ["1h"]
traforato-broker --jwt-secret TRAFORATO_JWT_SECRET [""]
traforato-broker --jwt-secret-file TRAFORATO_JWT_SECRET_FILE [""]
traforato-broker --listen TRAFORATO_BROKER_LISTEN_ADDR [""]
traforato-broker --placement-retry-max TRAFORATO_BROKER_PLACEMENT_RETRY_MAX ["2"]
traforato-broker --restart-grace TRAFORATO_BROKER_RESTART_GRACE ["40s"]
traforato-broker --worker-lease-sweep-interval TRAFORATO_BROKER_WORKER_LEASE_SWEEP_INTERVAL ["10s"]
traforato-broker --worker-lease-ttl TRAFORATO_BROKER_WORKER_LEASE_TTL ["120s"]
traforato-worker --advertise-url TRAFORATO_WORKER_ADVERTISE_URL [""]
traforato-worker --broker-control-url TRAFORATO_WORKER_BROKER_CONTROL_URL [""]
traforato-worker --broker-id TRAFORATO_WORKER_BROKER_ID ["broker_local"]
traforato-worker --default-ttl TRAFORATO_WORKER_DEFAULT_TTL ["30m"]
traforato-worker --default-virtualization TRAFORATO_WORKER_DEFAULT_VIRTUALIZATION ["container"]
traforato-worker --file TRAFORATO_WORKER_CONFIG [""]
traforato-worker --hostname TRAFORATO_WORKER_HOSTNAME ["localhost"]
traforato-worker --insecure-dev-mode-on-network TRAFORATO_INSECURE_DEV_MODE_ON_NETWORK []
traforato-worker --internal-secret TRAFORATO_INTERNAL_SECRET [""]
traforato-worker --internal-secret-file TRAFORATO_INTERNAL_SECRET_FILE [""]
traforato-worker --jwt-audience TRAFORATO_JWT_AUDIENCE ["traforato-api"]
traforato-worker --jwt-issuer TRAFORATO_JWT_ISSUER ["traforato"]
traforato-worker --jwt-max-lifetime TRAFORATO_JWT_MAX_LIFETIME ["1h"]
traforato-worker --jwt-secret TRAFORATO_JWT_SECRET [""]
traforato-worker --jwt-secret-file TRAFORATO_JWT_SECRET_FILE [""]
traforato-worker --listen TRAFORATO_WORKER_LISTEN_ADDR [""]
traforato-worker --max-live-sandboxes TRAFORATO_WORKER_MAX_LIVE_SANDBOXES ["0"]
traforato-worker --max-ttl TRAFORATO_WORKER_MAX_TTL ["24h"]
traforato-worker --registration-heartbeat TRAFORATO_WORKER_REGISTRATION_HEARTBEAT ["30s"]
traforato-worker --registration-jitter-percent TRAFORATO_WORKER_REGISTRATION_JITTER_PERCENT ["20"]
traforato-worker --registration-probe TRAFORATO_WORKER_REGISTRATION_PROBE ["1s"]
traforato-worker --total-cores TRAFORATO_WORKER_TOTAL_CORES ["0"]
traforato-worker --total-memory-mib TRAFORATO_WORKER_TOTAL_MEMORY_MIB ["0"]
traforato-worker --worker-id TRAFORATO_WORKER_ID ["worker_local"]
traforato-dev --broker-control-url TRAFORATO_DEV_BROKER_CONTROL_URL [""]
traforato-dev --broker-id TRAFORATO_DEV_BROKER_ID ["broker_local"]
traforato-dev --broker-listen TRAFORATO_DEV_BROKER_LISTEN_ADDR [""]
traforato-dev --default-ttl TRAFORATO_DEV_WORKER_DEFAULT_TTL ["30m"]
traforato-dev --default-virtualization TRAFORATO_DEV_DEFAULT_VIRTUALIZATION ["container"]
traforato-dev --file TRAFORATO_DEV_WORKER_CONFIG [""]
traforato-dev --insecure-dev-mode-on-network TRAFORATO_INSECURE_DEV_MODE_ON_NETWORK []
traforato-dev --internal-secret TRAFORATO_INTERNAL_SECRET [""]
traforato-dev --internal-secret-file TRAFORATO_INTERNAL_SECRET_FILE [""]
traforato-dev --jwt-audience TRAFORATO_JWT_AUDIENCE ["traforato-api"]
traforato-dev --jwt-issuer TRAFORATO_JWT_ISSUER ["traforato"]
traforato-dev --jwt-max-lifetime TRAFORATO_JWT_MAX_LIFETIME ["1h"]
traforato-dev --jwt-secret TRAFORATO_JWT_SECRET [""]
traforato-dev --jwt-secret-file TRAFORATO_JWT_SECRET_FILE [""]
traforato-dev --max-live-sandboxes TRAFORATO_DEV_WORKER_MAX_LIVE_SANDBOXES ["0"]
traforato-dev --max-ttl TRAFORATO_DEV_WORKER_MAX_TTL ["24h"]
traforato-dev --registration-heartbeat TRAFORATO_DEV_WORKER_REGISTRATION_HEARTBEAT ["30s"]
traforato-dev --registration-jitter-percent TRAFORATO_DEV_WORKER_REGISTRATION_JITTER_PERCENT ["20"]
traforato-dev --registration-probe TRAFORATO_DEV_WORKER_REGISTRATION_PROBE ["1s"]
traforato-dev --total-cores TRAFORATO_DEV_WORKER_TOTAL_CORES ["0"]
traforato-dev --total-memory-mib TRAFORATO_DEV_WORKER_TOTAL_MEMORY_MIB ["0"]
traforato-dev --worker-base-url TRAFORATO_DEV_WORKER_BASE_URL [""]
traforato-dev --worker-hostname TRAFORATO_DEV_WORKER_HOSTNAME ["localhost"]
traforato-dev --worker-id TRAFORATO_DEV_WORKER_ID ["worker_local"]
traforato-dev --worker-listen TRAFORATO_DEV_WORKER_LISTEN_ADDR [""]
"#;

#[test]
fn capacity_defaults_follow_the_backends() {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // Containers (the default virtualization): overcommitted, a watermark, a warm ceiling.
    let config = worker(&["--total-cores", "2"], "")
        .unwrap()
        .worker_config(None);
    assert_eq!(config.capacity.cpu_overcommit, DEFAULT_CPU_OVERCOMMIT);
    assert_eq!(config.capacity.memory_overcommit, DEFAULT_MEMORY_OVERCOMMIT);
    assert_eq!(config.max_live_sandboxes, 2 * DEFAULT_CPU_OVERCOMMIT);
    assert!(config.max_live_sandboxes >= 50);
    let host = settings::host_memory_mib().unwrap();
    assert_eq!(
        config.capacity.memory_high_watermark_mib,
        Some((host as f64 * 0.9) as u64)
    );
    assert_eq!(
        config.capacity.max_warm_per_tuple,
        Some(DEFAULT_MAX_WARM_PER_TUPLE)
    );
    assert_eq!(
        config.capacity.warm_fill_parallelism,
        traforato_core::worker::defaults::default_warm_fill_parallelism()
    );
    // The YAML section sets each key.
    let config = worker(
        &["--total-cores", "2"],
        "capacity:\n  cpu-overcommit: 4\n  memory-overcommit: 2\n  memory-high-watermark: 1 GiB\n  max-warm-per-tuple: 3\n  warm-fill-parallelism: 3\n",
    )
    .unwrap()
    .worker_config(None);
    assert_eq!(config.capacity.cpu_overcommit, 4);
    assert_eq!(config.capacity.memory_overcommit, 2);
    assert_eq!(config.capacity.memory_high_watermark_mib, Some(1024));
    assert_eq!(config.capacity.max_warm_per_tuple, Some(3));
    assert_eq!(config.capacity.warm_fill_parallelism, 3);
    assert_eq!(config.max_live_sandboxes, 8);
    assert!(parse_worker_yaml("capacity:\n  memory-high-watermark: 120%\n").is_err());
    assert!(parse_worker_yaml("capacity:\n  cpu-overcomit: 2\n").is_err());
    // A worker without containers reserves, as the prototype did.
    let config = worker(
        &["--total-cores", "2", "--default-virtualization", "fake"],
        "",
    )
    .unwrap()
    .worker_config(None);
    assert_eq!(config.capacity.cpu_overcommit, 1);
    assert_eq!(config.max_live_sandboxes, 2);
    assert_eq!(config.capacity.memory_high_watermark_mib, None);
}

#[test]
fn open_file_limit_is_raised_for_the_sandboxes() {
    let limit = crate::server::ensure_open_file_limit(64).unwrap();
    assert!(limit >= 256 + 64 * 8, "{limit}");
    let now = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    assert!(now.current.unwrap_or(u64::MAX) >= 256 + 64 * 8);
}

#[test]
fn secrets_come_from_files() {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let jwt = dir.path().join("jwt");
    let internal = dir.path().join("internal");
    std::fs::write(&jwt, "  hunter2-from-file\n").unwrap();
    std::fs::write(&internal, "internal-from-file\n").unwrap();
    let (jwt, internal) = (jwt.to_str().unwrap(), internal.to_str().unwrap());

    let mut args = BrokerArgs::try_parse_from([
        "traforato-broker",
        "--jwt-secret-file",
        jwt,
        "--internal-secret-file",
        internal,
    ])
    .unwrap();
    args.auth.read_secret_files().unwrap();
    let settings = BrokerSettings::from_args(&args).unwrap();
    assert_eq!(settings.auth.mode(), AuthMode::Prod);
    assert_eq!(settings.auth.secret, "hunter2-from-file");
    assert_eq!(settings.auth.internal_secret, "internal-from-file");
    // Prod: every interface by default, as with the secret itself.
    assert_eq!(settings.bind, "0.0.0.0:8080");
    assert!(!format!("{args:?}").contains("hunter2"));

    // The variable works as the flag does; settings of files never read are refused (they
    // would run without the secret).
    std::env::set_var("TRAFORATO_JWT_SECRET_FILE", jwt);
    let parsed = WorkerArgs::try_parse_from(["traforato-worker"]);
    std::env::remove_var("TRAFORATO_JWT_SECRET_FILE");
    let mut args = parsed.unwrap();
    let unread = WorkerSettings::load_worker(&args).unwrap_err();
    assert!(
        chain(&unread).contains("were not read"),
        "{}",
        chain(&unread)
    );
    args.auth.read_secret_files().unwrap();
    assert_eq!(args.auth.mode(), AuthMode::Prod);
    WorkerSettings::load_worker(&args).unwrap();

    // Refused: both a file and a value, an empty file (it would mean no authentication at
    // all), a file that cannot be read.
    let mut both = DevArgs::try_parse_from([
        "traforato-dev",
        "--jwt-secret",
        "x",
        "--jwt-secret-file",
        jwt,
    ])
    .unwrap();
    let err = both.auth.read_secret_files().unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::InvalidValue {
                key: "--jwt-secret-file",
                ..
            }
        ),
        "{err:?}"
    );
    let empty = dir.path().join("empty");
    std::fs::write(&empty, " \n").unwrap();
    let mut args = BrokerArgs::try_parse_from([
        "traforato-broker",
        "--jwt-secret-file",
        empty.to_str().unwrap(),
    ])
    .unwrap();
    let err = args.auth.read_secret_files().unwrap_err();
    assert!(chain(&err).contains("is empty"), "{}", chain(&err));
    let mut args = BrokerArgs::try_parse_from([
        "traforato-broker",
        "--internal-secret-file",
        "/nonexistent/secret",
    ])
    .unwrap();
    let err = args.auth.read_secret_files().unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::ReadSecretFile {
                flag: "--internal-secret-file",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        chain(&err).contains("/nonexistent/secret"),
        "{}",
        chain(&err)
    );
}

#[test]
fn version_names_the_commit() {
    assert!(VERSION.starts_with(env!("CARGO_PKG_VERSION")), "{VERSION}");
    assert!(VERSION.contains(" (commit "), "{VERSION}");
    let shown = BrokerArgs::command().render_version();
    assert_eq!(shown.trim(), format!("traforato-broker {VERSION}"));
}

#[test]
fn healthcheck_is_a_subcommand_with_the_service_flags() {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let args = WorkerArgs::try_parse_from([
        "traforato-worker",
        "--listen",
        "127.0.0.1:9999",
        "healthcheck",
        "--timeout",
        "1s",
    ])
    .unwrap();
    let Some(ServiceCommand::Healthcheck(check)) = &args.command else {
        panic!("{args:?}");
    };
    assert_eq!(check.timeout, std::time::Duration::from_secs(1));
    assert_eq!(check.url, None);
    let values = WorkerSettings::load_worker(&args).unwrap();
    assert_eq!(
        local_url(&values.listen, DEFAULT_WORKER_PORT, None),
        "http://127.0.0.1:9999"
    );
    assert!(BrokerArgs::try_parse_from(["traforato-broker"])
        .unwrap()
        .command
        .is_none());
}

#[test]
fn registration_probe_from_flag_variable_and_yaml() {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let probe = |extra: &[&str], yaml: &str| {
        worker(extra, yaml)
            .unwrap()
            .worker_config(None)
            .registration_probe
    };
    assert_eq!(probe(&[], ""), std::time::Duration::from_secs(1));
    assert_eq!(
        probe(&["--registration-probe", "250ms"], ""),
        std::time::Duration::from_millis(250)
    );
    assert_eq!(
        probe(&["--registration-probe", "250ms"], "registration-probe: 0s"),
        std::time::Duration::ZERO
    );
    let err = worker(&[], "registration-probe: soon").unwrap_err();
    assert!(
        chain(&err).contains("registration-probe"),
        "{}",
        chain(&err)
    );
}
