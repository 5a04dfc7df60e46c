//! The secrets kiln may be given and never passes on: every process kiln starts (cargo and
//! the build scripts and proc macros it runs, QEMU, image tools, package managers) gets an
//! environment without them. kiln reads them itself where it needs them (GitHub, signing).

use std::process::Command;

/// Variables holding credentials. GitHub's token (as workflows pass it, and as `gh` reads
/// it), the Actions runtime's tokens (cache, artifacts, OIDC), and kiln's signing key.
pub const SECRET_VARIABLES: &[&str] = &[
    "GITHUB_TOKEN",
    "GH_TOKEN",
    "ACTIONS_RUNTIME_TOKEN",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
    "ACTIONS_ID_TOKEN_REQUEST_URL",
    "KILN_SIGNING_KEY",
];

/// Removes [`SECRET_VARIABLES`] from the environment `command` will start with.
pub fn withhold_secrets(command: &mut Command) -> &mut Command {
    for name in SECRET_VARIABLES {
        command.env_remove(name);
    }
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_does_not_see_the_secrets() {
        let mut command = Command::new("sh");
        command.args(["-c", "env"]).env("GITHUB_TOKEN", "ghs_secret").env("KILN_SIGNING_KEY", "k:secret");
        command.env("KEPT", "yes");
        let output = withhold_secrets(&mut command).output().expect("sh runs");
        let env = String::from_utf8_lossy(&output.stdout);
        assert!(env.contains("KEPT=yes"), "{env}");
        assert!(!env.contains("secret"), "{env}");
    }
}
