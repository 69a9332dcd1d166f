//! Checking out a commit of a git repository with the `git` binary.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::{ContextError, redact_url};

/// At most this much of git's stderr goes into an error message.
const MAX_STDERR: usize = 2000;

/// Removes the key file when dropped, so it goes on every path out, panics and
/// cancellation included.
struct KeyFile(PathBuf);

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Whether `sha` is a plausible commit id: 7 to 64 hex digits (abbreviated, SHA-1, SHA-256).
fn valid_sha(sha: &str) -> bool {
    (7..=64).contains(&sha.len()) && sha.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Refuses URLs git would read as an option or as a command-running transport (`ext::`).
fn check_url(url: &str) -> Result<(), ContextError> {
    if url.is_empty() || url.starts_with('-') || url.contains("::") || url.contains('\n') {
        return Err(ContextError::Git(format!(
            "{:?} is not a git repository URL",
            redact_url(url)
        )));
    }
    Ok(())
}

/// `s` quoted for the shell git runs `GIT_SSH_COMMAND` with.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Whether `name` can be fetched as a branch or tag (`main`, `v1.2`, `refs/heads/x`,
/// `HEAD`) without git reading it as an option or a range.
fn valid_ref(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with(['-', '/'])
        && !name.contains("..")
        && !name.ends_with(['/', '.'])
        && !(name.chars()).any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c))
}

/// Clones `url` into `src` and checks out `sha` (detached), using `private_key` for ssh.
/// `sha` may also name a branch or tag (buildman's API takes one; Quay's manager always
/// sends a commit): it is fetched and its commit checked out.
pub(crate) async fn checkout(
    url: &str,
    sha: &str,
    private_key: Option<&str>,
    work_dir: &Path,
    src: &Path,
) -> Result<(), ContextError> {
    check_url(url)?;
    if !valid_sha(sha) && !valid_ref(sha) {
        return Err(ContextError::Git(format!(
            "{sha:?} is neither a commit id (7 to 64 hex digits) nor a branch or tag name"
        )));
    }
    // Outside src, so the key can never become part of the build context.
    let key = match private_key {
        Some(key) => Some(write_key(work_dir, key)?),
        None => None,
    };
    // Host keys are learnt into the work dir, not the user's ~/.ssh: a worker is as new as
    // its machine on every executor (a popen worker must not keep, or trip over, what an
    // earlier build learnt). Hosts pinned in /etc/ssh/ssh_known_hosts are still checked.
    let known_hosts = work_dir.join("git-known-hosts");
    let git = Git {
        ssh_command: key.as_ref().map(|k| {
            format!(
                "ssh -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=accept-new \
                 -o UserKnownHostsFile={} -o BatchMode=yes",
                shell_quote(&k.0.to_string_lossy()),
                shell_quote(&known_hosts.to_string_lossy())
            )
        }),
        secret: private_key,
    };
    let shown = redact_url(url);
    let src_arg = src.as_os_str().to_string_lossy().into_owned();
    git.run(
        None,
        &["clone", "--quiet", "--no-checkout", "--", url, &src_arg],
        &format!("cloning {shown}"),
    )
    .await?;
    let commit = format!("{sha}^{{commit}}");
    let mut target = sha;
    if !valid_sha(sha) {
        // A branch or tag: whatever the remote names so now.
        git.run(
            Some(src),
            &["fetch", "--quiet", "origin", "--", sha],
            &format!("fetching {sha} from {shown}"),
        )
        .await?;
        target = "FETCH_HEAD";
    } else if git
        .run(Some(src), &["cat-file", "-e", &commit], "")
        .await
        .is_err()
    {
        // Not reachable from the cloned refs (e.g. a pull request's head): ask for it.
        git.run(
            Some(src),
            &["fetch", "--quiet", "origin", sha],
            &format!("fetching commit {sha} from {shown}"),
        )
        .await?;
    }
    git.run(
        Some(src),
        &["checkout", "--quiet", "--detach", target],
        &format!("checking out {sha}"),
    )
    .await?;
    drop(key);
    Ok(())
}

/// Writes `key` to a new owner-only file in `work_dir`.
fn write_key(work_dir: &Path, key: &str) -> Result<KeyFile, ContextError> {
    let path = work_dir.join("git-ssh-key");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| ContextError::io("writing the git ssh key", e))?;
    let guard = KeyFile(path);
    file.write_all(key.as_bytes())
        .and_then(|()| {
            // OpenSSH refuses a PEM key without its final newline.
            if key.ends_with('\n') {
                Ok(())
            } else {
                file.write_all(b"\n")
            }
        })
        .map_err(|e| ContextError::io("writing the git ssh key", e))?;
    Ok(guard)
}

/// How git is run for one checkout.
struct Git<'a> {
    ssh_command: Option<String>,
    /// Scrubbed from anything git prints before it reaches an error message.
    secret: Option<&'a str>,
}

impl Git<'_> {
    /// Runs `git args` in `dir`; a failure becomes a Git error starting with `what`.
    async fn run(&self, dir: Option<&Path>, args: &[&str], what: &str) -> Result<(), ContextError> {
        let mut command = tokio::process::Command::new("git");
        command
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            // Never pick up an askpass helper that could wait for a person.
            .env_remove("GIT_ASKPASS")
            .env_remove("SSH_ASKPASS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        if let Some(ssh) = &self.ssh_command {
            command.env("GIT_SSH_COMMAND", ssh);
        }
        let output = command
            .output()
            .await
            .map_err(|e| ContextError::Git(format!("{what}: cannot run git: {e}")))?;
        if output.status.success() {
            return Ok(());
        }
        let mut stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if let Some(secret) = self.secret {
            for line in secret.lines().map(str::trim).filter(|l| l.len() >= 8) {
                stderr = stderr.replace(line, "<redacted>");
            }
        }
        let mut detail = stderr.split_whitespace().collect::<Vec<_>>().join(" ");
        if detail.len() > MAX_STDERR {
            let mut cut = MAX_STDERR;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
            detail.push('…');
        }
        Err(ContextError::Git(if detail.is_empty() {
            format!("{what}: git exited with {}", output.status)
        } else {
            format!("{what}: {detail}")
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha_must_be_hex_of_plausible_length() {
        assert!(valid_sha("abc1234"));
        assert!(valid_sha(&"a".repeat(40)));
        assert!(valid_sha(&"0".repeat(64)));
        assert!(!valid_sha("abc123"));
        assert!(!valid_sha(&"a".repeat(65)));
        assert!(!valid_sha("--upload-pack=x"));
        assert!(!valid_sha("HEAD~1a"));
    }

    #[test]
    fn refs_git_could_misread_are_refused() {
        for name in [
            "main",
            "v1.2.3",
            "refs/heads/feature/x",
            "HEAD",
            "release-1",
        ] {
            assert!(valid_ref(name), "{name}");
        }
        for name in [
            "",
            "-x",
            "--upload-pack=x",
            "a..b",
            "a b",
            "x~1",
            "a:b",
            "/x",
            "x/",
        ] {
            assert!(!valid_ref(name), "{name}");
        }
    }

    #[test]
    fn urls_that_git_would_misread_are_refused() {
        assert!(check_url("--upload-pack=touch /tmp/x").is_err());
        assert!(check_url("ext::sh -c touch% /tmp/x").is_err());
        assert!(check_url("https://github.com/o/r.git").is_ok());
        assert!(check_url("git@github.com:o/r.git").is_ok());
    }

    #[test]
    fn shell_quote_survives_quotes() {
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
    }
}
