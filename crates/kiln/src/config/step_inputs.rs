//! The files a `[step.NAME]` input names: a file, every file of a directory (as a package's
//! sources are listed: `.gitignore` respected, `target/` left out), or the files a glob
//! (gitignore syntax) matches below its literal prefix.

use std::path::{Path, PathBuf};

use kiln_store::SourceSet;

/// Whether an input pattern is a glob rather than a path.
pub(crate) fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// The files `pattern` names, relative to `root` and sorted, leaving out any inside one of
/// `outputs` (a step's own outputs are never its inputs). A missing path gives no files.
pub(crate) fn expand(root: &Path, pattern: &str, outputs: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = if is_glob(pattern) { glob(root, pattern)? } else { path(root, pattern)? };
    files.retain(|file| !outputs.iter().any(|output| file.starts_with(output)));
    files.sort();
    files.dedup();
    Ok(files)
}

/// A file, or the files of a directory.
fn path(root: &Path, text: &str) -> Result<Vec<PathBuf>, String> {
    let full = root.join(text);
    let relative = full.strip_prefix(root).map(Path::to_owned).unwrap_or_else(|_| PathBuf::from(text));
    if full.is_file() {
        return Ok(vec![relative]);
    }
    if !full.is_dir() {
        return Ok(Vec::new());
    }
    let set = SourceSet::package_dir_within(&full, root).map_err(|e| e.to_string())?;
    Ok(set.files.into_iter().map(|file| relative.join(file)).collect())
}

/// The files below the glob's literal prefix that it matches.
fn glob(root: &Path, pattern: &str) -> Result<Vec<PathBuf>, String> {
    let mut prefix = PathBuf::new();
    for part in pattern.split('/') {
        if is_glob(part) {
            break;
        }
        prefix.push(part);
    }
    let mut builder = ignore::gitignore::GitignoreBuilder::new(root);
    builder.add_line(None, pattern).map_err(|e| format!("invalid glob `{pattern}`: {e}"))?;
    let matcher = builder.build().map_err(|e| format!("invalid glob `{pattern}`: {e}"))?;
    let start = root.join(&prefix);
    if !start.is_dir() {
        return Ok(Vec::new());
    }
    let set = SourceSet::package_dir_within(&start, root).map_err(|e| e.to_string())?;
    Ok(set
        .files
        .into_iter()
        .map(|file| prefix.join(file))
        .filter(|file| matcher.matched_path_or_any_parents(root.join(file), false).is_ignore())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_directories_and_globs_expand_without_the_outputs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("src/boards")).expect("mkdir");
        for file in ["src/linker-qemu.ld", "src/linker-k210.ld", "src/linker.ld", "src/main.rs", "src/boards/a.ld"] {
            std::fs::write(root.join(file), file).expect("write");
        }
        let outputs = [PathBuf::from("src/linker.ld")];
        assert_eq!(expand(root, "src/linker-qemu.ld", &outputs), Ok(vec![PathBuf::from("src/linker-qemu.ld")]));
        assert_eq!(
            expand(root, "src/linker-*.ld", &outputs),
            Ok(vec![PathBuf::from("src/linker-k210.ld"), PathBuf::from("src/linker-qemu.ld")])
        );
        assert_eq!(
            expand(root, "src/**/*.ld", &outputs),
            Ok(vec![
                PathBuf::from("src/boards/a.ld"),
                PathBuf::from("src/linker-k210.ld"),
                PathBuf::from("src/linker-qemu.ld")
            ])
        );
        let whole = expand(root, "src", &outputs).expect("a directory");
        assert_eq!(whole.len(), 4, "every file but the output: {whole:?}");
        assert!(!whole.contains(&PathBuf::from("src/linker.ld")));
        assert_eq!(expand(root, "nothing/*.ld", &outputs), Ok(Vec::new()));
        assert_eq!(expand(root, "missing.ld", &outputs), Ok(Vec::new()));
    }
}
