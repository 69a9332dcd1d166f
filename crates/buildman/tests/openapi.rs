//! The OpenAPI document a running manager serves at `/api/openapi.json`: valid OpenAPI 3.1
//! (openapi-spec-validator), naming every route the routers serve with the token each
//! takes; and the server answering as it says (schemathesis, a bounded number of examples).
//! Both are Python tools `.ci/run` installs; without them these tests fail saying so.
//!
//! Schemathesis runs from this test rather than from `.ci/run` because it needs a running
//! manager with a known API token and a worker for the builds it queues, which the test
//! harness starts and stops on free ports.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use buildman_api::paths;
use buildman_server::Route;
use common::*;
use serde_json::Value;

/// One worker, and a rate limit schemathesis's burst of requests stays under.
fn one_worker(dir: &std::path::Path) -> String {
    format!(
        "BUILDMAN_LIMITS: {{RATE_PER_SECOND: 100000, RATE_BURST: 100000}}\n{}",
        config_yaml("ALLOWED_WORKER_COUNT: 1", &popen(dir, "local", ""))
    )
}

/// Runs `program` with `args`, `stdin` on its standard input; panics with its output (and
/// how to install it) unless it succeeds.
async fn run(program: &str, args: &[&str], stdin: &[u8], install: &str) -> String {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        // schemathesis keeps its example database in the working directory.
        .current_dir(std::env::temp_dir())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e} ({install})"));
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).await.expect("write stdin");
    drop(input);
    let out = child.wait_with_output().await.expect("wait");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({install}):\n{text}"
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_valid_openapi_3_1_and_names_every_route_served() {
    let s = TestServer::start(one_worker, "happy", fast_timings()).await;
    let response = reqwest::get(format!("{}{}", s.base, paths::OPENAPI))
        .await
        .expect("GET the document without a token");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    let doc: Value = serde_json::from_str(&text).expect("JSON");
    assert!(
        doc["openapi"].as_str().unwrap_or("").starts_with("3.1."),
        "{}",
        doc["openapi"]
    );

    let validate = "import json, sys\n\
        from openapi_spec_validator import validate\n\
        validate(json.load(sys.stdin))\n";
    let install = "pip install openapi-spec-validator, as .ci/run does";
    run("python3", &["-c", validate], text.as_bytes(), install).await;

    // Every route served is documented, and nothing else, with the token it takes.
    let served: BTreeSet<Route> = (buildman_server::rest::routes().into_iter())
        .chain(buildman_server::ops::routes())
        .collect();
    let scheme = buildman_server::openapi::BEARER;
    let global = doc["security"].clone();
    let mut documented = BTreeSet::new();
    for (path, operations) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in operations.as_object().expect("operations") {
            let security = operation.get("security").unwrap_or(&global);
            let anonymous = (security.as_array().expect("security list").iter())
                .any(|requirement| requirement.as_object().is_some_and(|r| r.is_empty()));
            let token = !anonymous;
            if token {
                assert!(
                    security.to_string().contains(scheme),
                    "{method} {path}: {security}"
                );
                let refused = &operation["responses"]["401"];
                assert!(refused.is_object(), "{method} {path} documents no 401");
                let limited = &operation["responses"]["429"]["headers"]["Retry-After"];
                assert!(
                    limited.is_object(),
                    "{method} {path}: no 429 with Retry-After"
                );
            }
            // Every error answer is the one error body.
            for (status, answer) in operation["responses"].as_object().expect("responses") {
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = &answer["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(
                        schema, "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
            let method = Box::leak(method.to_uppercase().into_boxed_str());
            documented.insert(Route {
                method,
                path: path.clone(),
                token,
            });
        }
    }
    let missing: Vec<_> = served.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&served).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "served but not documented (add it to crates/server/src/openapi.rs): {missing:?}\n\
         documented but not served: {extra:?}"
    );
    assert_eq!(
        doc["components"]["securitySchemes"][scheme]["scheme"], "bearer",
        "{}",
        doc["components"]
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_off_the_document() {
    let s = TestServer::start(one_worker, "happy", fast_timings()).await;
    // Something to read: a build that ran, and one waiting behind a held slot is not needed.
    let id = s.submit("demo/app", &["v1"]).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.wait_phase(&id, &["complete"], Duration::from_secs(60))
        .await;

    let schema = format!("{}{}", s.base, paths::OPENAPI);
    let auth = format!("Authorization: Bearer {}", s.token);
    let report = s.dir.path().join("schemathesis");
    let args = [
        "run",
        schema.as_str(),
        "--header",
        auth.as_str(),
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,\
         response_headers_conformance,response_schema_conformance",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "15",
        "--seed",
        "14",
        "--workers",
        "1",
        "--report-dir",
        report.to_str().expect("path"),
        "--no-color",
    ];
    let install = "pip install schemathesis, as .ci/run does";
    let summary = run("schemathesis", &args, b"", install).await;
    eprintln!("{summary}");
    s.stop().await;
}
