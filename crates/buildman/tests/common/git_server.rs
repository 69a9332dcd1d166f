//! Git repositories served on loopback for the git-build tests: a bare repository with a
//! Dockerfile, `git daemon` (git://, no key) and the test's own sshd letting in one deploy
//! key only. Needs git and openssh-server (`.ci/run` installs them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use buildman_testkit::free_port;

/// Runs a command to success and returns its trimmed stdout; panics with its stderr
/// otherwise.
pub fn run(command: &mut Command) -> String {
    let out = command.output().expect("command runs");
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare repository `dir/repo.git` whose `main` holds busybox and a Dockerfile printing
/// `marker` (unique, so buildah's cache cannot skip the step); returns its commit.
pub fn make_repo(dir: &Path, marker: &str) -> String {
    let work = dir.join("work");
    std::fs::create_dir_all(&work).expect("work tree");
    std::fs::copy(buildman_testkit::busybox(), work.join("busybox")).expect("busybox");
    std::fs::write(
        work.join("Dockerfile"),
        format!(
            "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"echo\", \"{marker}\"]\n"
        ),
    )
    .expect("Dockerfile");
    let git = |args: &[&str]| {
        run(Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-C"])
            .arg(&work)
            .args(args))
    };
    git(&["init", "--quiet", "--initial-branch=main"]);
    git(&["add", "."]);
    git(&["commit", "--quiet", "-m", "context"]);
    let sha = git(&["rev-parse", "HEAD"]);
    run(Command::new("git")
        .args(["clone", "--quiet", "--bare"])
        .arg(&work)
        .arg(dir.join("repo.git")));
    sha
}

/// A new key pair `dir/deploy` and `dir/deploy.pub` made by `ssh-keygen` with `kind`
/// (e.g. `["-t", "ed25519"]`); the private key's path.
pub fn deploy_key(dir: &Path, kind: &[&str]) -> PathBuf {
    let path = dir.join("deploy");
    run(Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-C", "deploy"])
        .args(kind)
        .arg("-f")
        .arg(&path));
    path
}

/// A child process killed when dropped.
pub struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something accepts connections on 127.0.0.1:`port`.
async fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "{what} did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `git daemon` serving `dir` on a free loopback port; returns it and the port.
pub async fn git_daemon(dir: &Path) -> (Daemon, u16) {
    let port = free_port();
    let child = Command::new("git")
        .arg("daemon")
        .arg("--reuseaddr")
        .arg("--export-all")
        .arg("--listen=127.0.0.1")
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", dir.display()))
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("git daemon");
    let daemon = Daemon(child);
    wait_listening(port, "git daemon").await;
    (daemon, port)
}

/// This test's own sshd on a free loopback port, letting in `deploy.pub`'s key only;
/// returns it and the `ssh://` URL of `dir/repo.git` ([`make_repo`]) through it.
pub async fn sshd(dir: &Path, deploy_pub: &Path) -> (Daemon, String) {
    let port = free_port();
    let host_key = dir.join("host_key");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&host_key));
    std::fs::copy(deploy_pub, dir.join("authorized_keys")).expect("authorized_keys");
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             PidFile none\nStrictModes no\nPermitRootLogin prohibit-password\n",
            host_key.display(),
            dir.join("authorized_keys").display()
        ),
    )
    .expect("sshd_config");
    // sshd's privilege separation directory.
    std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("sshd.log")).expect("sshd.log"))
        .spawn()
        .expect("sshd (openssh-server) is installed");
    let daemon = Daemon(child);
    wait_listening(port, "sshd").await;
    let user = run(Command::new("id").arg("-un"));
    let url = format!(
        "ssh://{user}@127.0.0.1:{port}{}",
        dir.join("repo.git").display()
    );
    (daemon, url)
}
