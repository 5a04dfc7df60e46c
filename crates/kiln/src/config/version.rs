//! `kiln-version`: the kiln a project asks for, checked against this one with Cargo's rules
//! (a bare `"0.1"` means `^0.1`: any 0.1.x from 0.1.0 on).

use semver::{BuildMetadata, Comparator, Op, Version, VersionReq};
use toml::Spanned;

use super::{ConfigError, resolve::Resolver};

/// How a wanted version relates to this kiln.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Fit {
    /// This kiln satisfies it.
    Compatible,
    /// The project asks for a newer kiln than this one.
    NeedsNewer,
    /// The project was written for an older series than this kiln.
    NeedsOlder,
}

/// How `wanted` (a partial version such as `0.1` or `1.2.3`) fits `ours`; `None` when it is
/// not a version.
pub(super) fn fit(wanted: &str, ours: &Version) -> Option<Fit> {
    let wanted = wanted.trim();
    // Only a plain version: `>=0.1` or `*` would say nothing about which kiln is meant.
    if !wanted.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let comparator = Comparator::parse(wanted).ok()?;
    if comparator.op != Op::Caret {
        return None;
    }
    if (VersionReq { comparators: vec![comparator.clone()] }).matches(ours) {
        return Some(Fit::Compatible);
    }
    let floor = Version {
        major: comparator.major,
        minor: comparator.minor.unwrap_or(0),
        patch: comparator.patch.unwrap_or(0),
        pre: comparator.pre,
        build: BuildMetadata::EMPTY,
    };
    Some(if floor > *ours { Fit::NeedsNewer } else { Fit::NeedsOlder })
}

impl Resolver<'_> {
    pub(super) fn check_version(&self, wanted: &Spanned<String>) -> Result<(), ConfigError> {
        let ours = env!("CARGO_PKG_VERSION");
        let key = "kiln-version".to_owned();
        let parsed = Version::parse(ours).ok().and_then(|version| fit(wanted.get_ref(), &version));
        let Some(fit) = parsed else {
            return Err(self
                .error(Some(wanted.span()), key, format!("`{}` is not a version", wanted.get_ref()))
                .with_help("write a version such as \"0.1\""));
        };
        let err = || {
            self.error(
                Some(wanted.span()),
                key.clone(),
                format!("this project asks for kiln {} but this is kiln {ours}", wanted.get_ref()),
            )
        };
        match fit {
            Fit::Compatible => Ok(()),
            Fit::NeedsNewer => Err(err().with_help(format!(
                "update kiln to {wanted} or newer: set the kiln dependency in your xtask's Cargo.toml to \"{wanted}\" \
                 and run `cargo update -p kiln-xtask`",
                wanted = wanted.get_ref(),
            ))),
            Fit::NeedsOlder => Err(err().with_help(
                "this kiln is newer than the project expects: update `kiln-version` after checking the changelog",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_versions_follow_cargos_caret_rules() {
        let ours = Version::parse("0.1.4").expect("version");
        assert_eq!(fit("0.1", &ours), Some(Fit::Compatible));
        assert_eq!(fit("0.1.2", &ours), Some(Fit::Compatible));
        assert_eq!(fit("0.1.5", &ours), Some(Fit::NeedsNewer));
        assert_eq!(fit("0.2", &ours), Some(Fit::NeedsNewer));
        assert_eq!(fit("1", &ours), Some(Fit::NeedsNewer));
        assert_eq!(fit("0.0.9", &ours), Some(Fit::NeedsOlder));
        let one = Version::parse("1.4.0").expect("version");
        assert_eq!(fit("1.2", &one), Some(Fit::Compatible));
        assert_eq!(fit("2", &one), Some(Fit::NeedsNewer));
        for bad in ["", "x", ">=0.1", "*", "0.1 || 0.2"] {
            assert_eq!(fit(bad, &ours), None, "{bad:?}");
        }
    }
}
