//! How the executor authenticates, as Quay decides it from the K8S_API_* keys, and a
//! kubeconfig.

use buildman_executor::Executor;
use buildman_executor::kubernetes::KubernetesExecutor;
use buildman_testkit::kube::{Auth, FakeKube, TlsFiles};

use crate::{Certs, executor, settings};

#[tokio::test]
async fn bearer_token_over_tls_checked_against_the_ca() {
    let certs = Certs::make();
    let fake = FakeKube::start(Auth::Bearer("sa-token".into()), Some(certs.server(false))).await;
    let executor = executor(&format!(
        "EXECUTOR: kubernetes\nK8S_API_SERVER: 127.0.0.1:{}\nSERVICE_ACCOUNT_TOKEN: sa-token\nK8S_API_TLS_CA: {}",
        fake.addr.port(),
        certs.path("ca.pem").display()
    ))
    .await;
    assert_eq!(executor.running().await.expect("running"), 0);
    let seen = fake.requests();
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer sa-token"));
}

#[tokio::test]
async fn client_certificate() {
    let certs = Certs::make();
    let fake = FakeKube::start(Auth::ClientCertificate, Some(certs.server(true))).await;
    let executor = executor(&format!(
        "EXECUTOR: kubernetes\nK8S_API_SERVER: 127.0.0.1:{}\nK8S_API_TLS_CERT: {}\nK8S_API_TLS_KEY: {}\nK8S_API_TLS_CA: {}",
        fake.addr.port(),
        certs.path("client.pem").display(),
        certs.path("client.key").display(),
        certs.path("ca.pem").display()
    ))
    .await;
    assert_eq!(executor.running().await.expect("running"), 0);
    let seen = fake.requests();
    assert!(seen[0].client_certificate);
    assert_eq!(seen[0].authorization, None);
}

#[tokio::test]
async fn plain_http_without_credentials() {
    let fake = FakeKube::start(Auth::Anyone, None).await;
    let executor = executor(&format!(
        "EXECUTOR: kubernetes\nK8S_API_SERVER: {}",
        fake.addr
    ))
    .await;
    assert_eq!(executor.running().await.expect("running"), 0);
    assert_eq!(fake.requests()[0].authorization, None);
}

#[tokio::test]
async fn verify_tls_false_accepts_a_self_signed_server() {
    let certs = Certs::make();
    let tls = TlsFiles {
        cert: certs.path("self.pem"),
        key: certs.path("self.key"),
        client_ca: None,
    };
    let fake = FakeKube::start(Auth::Bearer("t0k3n".into()), Some(tls)).await;
    let entry = format!(
        "EXECUTOR: kubernetes\nK8S_API_SERVER: 127.0.0.1:{}\nSERVICE_ACCOUNT_TOKEN: t0k3n",
        fake.addr.port()
    );
    let refused = executor(&entry).await.running().await;
    assert!(
        refused.is_err(),
        "a self-signed certificate is refused by default"
    );
    let executor = executor(&format!("{entry}\nVERIFY_TLS: false")).await;
    assert_eq!(executor.running().await.expect("running"), 0);
}

#[tokio::test]
async fn a_wrong_ca_is_refused_with_a_clear_error() {
    let certs = Certs::make();
    let fake = FakeKube::start(Auth::Bearer("t0k3n".into()), Some(certs.server(false))).await;
    let executor = executor(&format!(
        "EXECUTOR: kubernetes\nK8S_API_SERVER: 127.0.0.1:{}\nSERVICE_ACCOUNT_TOKEN: t0k3n\nK8S_API_TLS_CA: {}",
        fake.addr.port(),
        certs.path("other-ca.pem").display()
    ))
    .await;
    let e = executor.running().await.unwrap_err().to_string();
    assert!(e.contains("cannot reach the Kubernetes API"), "{e}");
    assert!(
        e.contains("UnknownIssuer") || e.contains("certificate"),
        "names the certificate problem: {e}"
    );
    assert!(e.contains("K8S_API_TLS_CA"), "says what to check: {e}");
    assert!(!e.contains("t0k3n"), "{e}");
    assert!(
        fake.requests().is_empty(),
        "no request went over the refused connection"
    );
}

#[tokio::test]
async fn a_missing_ca_file_is_named_at_start() {
    let Err(e) = KubernetesExecutor::new(settings(
        "EXECUTOR: kubernetes\nSERVICE_ACCOUNT_TOKEN: t\nK8S_API_TLS_CA: /nonexistent/ca.pem",
    ))
    .await
    else {
        panic!("a missing CA file must be refused");
    };
    assert!(e.contains("K8S_API_TLS_CA /nonexistent/ca.pem"), "{e}");
}

#[tokio::test]
async fn a_kubeconfig_names_the_server_and_the_credentials() {
    let certs = Certs::make();
    let fake = FakeKube::start(
        Auth::Bearer("from-kubeconfig".into()),
        Some(certs.server(false)),
    )
    .await;
    let kubeconfig = certs.path("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\nclusters:\n- name: fake\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority: {}\nusers:\n- name: builder\n  user:\n    token: from-kubeconfig\ncontexts:\n- name: test\n  context:\n    cluster: fake\n    user: builder\n",
            fake.addr.port(),
            certs.path("ca.pem").display()
        ),
    )
    .unwrap();
    let executor = executor(&format!(
        "EXECUTOR: kubernetes\nK8S_KUBECONFIG: {}",
        kubeconfig.display()
    ))
    .await;
    assert_eq!(executor.running().await.expect("running"), 0);
    assert_eq!(
        fake.requests()[0].authorization.as_deref(),
        Some("Bearer from-kubeconfig")
    );
}
