//! The deployment files: the Containerfile's runtime stage builds with buildah (chroot
//! isolation, no network) from this build's binary into an image that runs it as a non-root
//! user; the Kubernetes manifests are valid (kubernetes-validate, strict) and agree with the
//! config.yaml they ship (which `buildman check-config` accepts); the systemd unit passes
//! `systemd-analyze verify` (skipped, saying so, where systemd-analyze is missing).

use std::path::{Path, PathBuf};
use std::process::Command;

use buildman_api::paths;
use buildman_testkit::Buildah;
use serde_yaml_ng::Value;

const BUILDMAN: &str = env!("CARGO_BIN_EXE_buildman");

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every document of every manifest in deploy/kubernetes.
fn manifests() -> Vec<(PathBuf, Value)> {
    let dir = root().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut documents = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = serde::Deserialize::deserialize(document).expect("YAML");
            documents.push((file.clone(), value));
        }
    }
    documents
}

/// The one document of `kind`.
fn find<'a>(documents: &'a [(PathBuf, Value)], kind: &str) -> &'a Value {
    let mut of_kind = documents.iter().filter(|(_, d)| d["kind"] == kind);
    let (_, found) = of_kind.next().unwrap_or_else(|| panic!("no {kind}"));
    found
}

#[test]
fn the_kubernetes_manifests_are_valid_and_agree_with_their_config() {
    let dir = root().join("deploy/kubernetes");
    let files: Vec<PathBuf> = (manifests().into_iter().map(|(f, _)| f))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for version in ["1.37.0", "1.33.0"] {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet", "-k", version])
            .args(&files)
            .output()
            .expect(
                "kubernetes-validate runs (`pip install kubernetes-validate`, as .ci/run does)",
            );
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !text.contains("ERROR"),
            "{}: {text}",
            dir.display()
        );
    }

    let documents = manifests();
    for kind in [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "PodDisruptionBudget",
        "Secret",
    ] {
        find(&documents, kind);
    }
    // The config the ConfigMap holds is one `serve` takes.
    let config = find(&documents, "ConfigMap")["data"]["config.yaml"]
        .as_str()
        .expect("config.yaml in the ConfigMap");
    let scratch = tempfile::tempdir().expect("temp dir");
    let config_file = scratch.path().join("config.yaml");
    std::fs::write(&config_file, config).expect("write");
    let out = Command::new(BUILDMAN)
        .arg("check-config")
        .arg(&config_file)
        .output()
        .expect("check-config");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let config: Value = serde_yaml_ng::from_str(config).expect("config YAML");
    let port_of = |key: &str| {
        let address = config[key].as_str().unwrap_or_else(|| panic!("{key}"));
        let port = address.rsplit_once(':').expect("host:port").1;
        port.parse::<u64>().expect("port")
    };

    // The Deployment's ports are the config's listen addresses; its probes are the health
    // endpoints on the metrics port; the signing key is mounted where the config reads it.
    let deployment = find(&documents, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let container_port = |name: &str| {
        let ports = container["ports"].as_sequence().expect("ports");
        let port = ports.iter().find(|p| p["name"] == name);
        port.unwrap_or_else(|| panic!("no port {name}"))["containerPort"]
            .as_u64()
            .expect("a number")
    };
    assert_eq!(container_port("http"), port_of("BUILDMAN_HTTP_LISTEN"));
    assert_eq!(container_port("grpc"), port_of("BUILDMAN_GRPC_LISTEN"));
    assert_eq!(
        container_port("metrics"),
        port_of("BUILDMAN_METRICS_LISTEN")
    );
    for (probe, path) in [
        ("livenessProbe", paths::HEALTHZ),
        ("readinessProbe", paths::READYZ),
        ("startupProbe", paths::HEALTHZ),
    ] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    let key_path = config["BUILDMAN_JWT_SIGNING_KEY"]["PRIVATE_KEY_PATH"]
        .as_str()
        .expect("PRIVATE_KEY_PATH");
    let mounts = container["volumeMounts"].as_sequence().expect("mounts");
    let key_mount = mounts
        .iter()
        .find(|m| m["name"] == "signing-key")
        .expect("mounted");
    let mount_path = key_mount["mountPath"].as_str().expect("mountPath");
    assert!(
        key_path.starts_with(mount_path),
        "{key_path} outside {mount_path}"
    );
    // The grace period covers the drain.
    let drain = config["BUILDMAN_DRAIN_SECONDS"].as_u64().expect("drain");
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace");
    assert!(grace > drain, "grace {grace} s, drain {drain} s");

    // The Service serves HTTP and gRPC; the Role is in the executor's namespace.
    let service = find(&documents, "Service");
    let names: Vec<&str> = (service["spec"]["ports"]
        .as_sequence()
        .expect("ports")
        .iter())
    .filter_map(|p| p["name"].as_str())
    .collect();
    assert!(
        names.contains(&"http") && names.contains(&"grpc"),
        "{names:?}"
    );
    let executor = &config["BUILD_MANAGER"][1]["EXECUTORS"][0];
    assert_eq!(
        find(&documents, "Role")["metadata"]["namespace"],
        executor["BUILDER_NAMESPACE"]
    );
    assert_eq!(pod["serviceAccountName"], "buildman");
}

#[test]
fn the_systemd_unit_verifies() {
    let Some(analyze) = buildman_testkit::which(&["systemd-analyze"]) else {
        eprintln!("SKIPPED: systemd-analyze is not installed; the unit was not verified");
        return;
    };
    let unit = std::fs::read_to_string(root().join("deploy/systemd/buildman.service"))
        .expect("deploy/systemd/buildman.service");
    assert!(
        unit.contains("KillMode=mixed"),
        "SIGTERM to the manager alone"
    );
    // verify checks that ExecStart's program exists: point it at this build's binary.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("buildman.service");
    std::fs::write(&file, unit.replace("/usr/local/bin/buildman", BUILDMAN)).expect("write");
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&file)
        .output()
        .expect("systemd-analyze");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
}

/// The shared libraries `binary` loads, with the loader (from `ldd`).
fn shared_libraries(binary: &str) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().expect("ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line.split_whitespace().next(),
            }?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// A stand-in for the production runtime image (distroless/cc, not reachable here): the
/// C libraries the binary needs and the `nonroot` user, committed as `name`.
fn runtime_base(buildah: &Buildah, name: &str, scratch: &Path) {
    let rootfs = scratch.join("rootfs");
    for library in shared_libraries(BUILDMAN) {
        let target = rootfs.join(library.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(target.parent().expect("parent")).expect("dir");
        std::fs::copy(&library, &target).expect("copy a library");
    }
    std::fs::create_dir_all(rootfs.join("etc")).expect("etc");
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
    )
    .expect("passwd");
    let container = buildah.run(&["from", "scratch"]).trim().to_string();
    buildah.run(&["copy", &container, rootfs.to_str().expect("utf-8"), "/"]);
    buildah.run(&["commit", "--quiet", "--rm", &container, name]);
}

/// The Containerfile's global arguments and its last stage, copying from the build context
/// instead of the build stage.
fn runtime_stage() -> String {
    let text = std::fs::read_to_string(root().join("Containerfile")).expect("Containerfile");
    let lines: Vec<&str> = text.lines().collect();
    let last_from = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("FROM");
    let arguments = lines[..last_from].iter().filter(|l| l.starts_with("ARG "));
    let stage = lines[last_from..]
        .iter()
        .map(|l| l.replace("--from=build ", ""));
    let mut out: Vec<String> = arguments.map(|l| l.to_string()).collect();
    out.extend(stage);
    out.join("\n") + "\n"
}

/// The size of `image` in bytes, as buildah reports it: three significant digits, decimal
/// units (`312 MB`).
fn image_size(buildah: &Buildah, image: &str) -> f64 {
    let listing: serde_json::Value =
        serde_json::from_str(&buildah.run(&["images", "--json", image])).expect("JSON");
    let human = listing[0]["size"].as_str().expect("size");
    let (number, unit) = human.split_once(' ').expect("a number and a unit");
    let scale = match unit {
        "B" => 1.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        other => panic!("unit {other:?}"),
    };
    number.parse::<f64>().expect("a number") * scale
}

#[test]
fn the_containerfile_runtime_stage_builds_a_non_root_image_of_the_binary() {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = (dir.path().join("root"), dir.path().join("runroot"));
    let buildah = Buildah {
        storage: Some(storage),
    };
    let base = "localhost/buildman-runtime-base:test";
    runtime_base(&buildah, base, dir.path());

    // The context the build stage would leave: /out/buildman and the empty data dir.
    let context = dir.path().join("context");
    std::fs::create_dir_all(context.join("out/data")).expect("context");
    std::fs::copy(BUILDMAN, context.join("out/buildman")).expect("binary");
    let containerfile = context.join("Containerfile.runtime");
    std::fs::write(&containerfile, runtime_stage()).expect("write");
    let image = "localhost/buildman:test";
    let build_arg = format!("RUNTIME_IMAGE={base}");
    buildah.run(&[
        "bud",
        "--isolation",
        "chroot",
        "--build-arg",
        &build_arg,
        "-f",
        containerfile.to_str().expect("utf-8"),
        "-t",
        image,
        context.to_str().expect("utf-8"),
    ]);

    let inspect: serde_json::Value =
        serde_json::from_str(&buildah.run(&["inspect", "--type", "image", image])).expect("JSON");
    let config = &inspect["OCIv1"]["config"];
    assert_eq!(config["User"], "65532:65532", "{config}");
    assert_eq!(
        config["Entrypoint"][0], "/usr/local/bin/buildman",
        "{config}"
    );
    assert_eq!(config["Cmd"][0], "serve", "{config}");

    // It runs, as that user, and holds the binary and nothing else over the base.
    let container = buildah.run(&["from", image]).trim().to_string();
    let version = buildah.run(&[
        "run",
        "--isolation",
        "chroot",
        &container,
        "--",
        "/usr/local/bin/buildman",
        "--version",
    ]);
    assert!(version.starts_with("buildman "), "{version}");
    buildah.run(&["rm", &container]);
    let binary = std::fs::metadata(BUILDMAN).expect("binary").len() as f64;
    let (size, base_size) = (image_size(&buildah, image), image_size(&buildah, base));
    eprintln!("image {size} bytes: base {base_size} + binary {binary}");
    // buildah rounds to three digits: allow that, and no more.
    assert!(
        size <= (base_size + binary) * 1.01,
        "the image holds more than the base and the binary: {size} bytes"
    );
    buildah.run(&["rmi", "--all", "--force"]);
}
